"""Start-up of the JAX commands: the runtime line, the unused-accelerator warning, the cache."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from osteo_jax.cli import build_parser, runtime


@pytest.mark.parametrize(
    "backend, gpu, tpu, extra",
    [
        ("cpu", True, False, "cuda12"),
        ("cpu", False, True, "tpu"),
        ("cpu", True, True, "tpu"),  # a TPU VM with a stray nvidia-smi: the TPU counts
        ("cpu", False, False, None),
        ("gpu", True, False, None),
        ("tpu", False, True, None),
    ],
)
def test_unused_accelerator_names_the_extra(backend, gpu, tpu, extra):
    warning = runtime.unused_accelerator(backend, gpu=gpu, tpu=tpu)
    if extra is None:
        assert warning is None
    else:
        assert f'pip install -e ".[{extra}]"' in warning
        assert "jax runs on the CPU" in warning


def test_probes_read_the_device_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime.shutil, "which", lambda name: None)
    assert not runtime.gpu_visible(tmp_path) and not runtime.tpu_visible(tmp_path)
    (tmp_path / "vfio").mkdir()
    (tmp_path / "vfio" / "vfio").touch()  # the vfio control node alone is no TPU
    assert not runtime.tpu_visible(tmp_path)
    (tmp_path / "vfio" / "0").touch()
    assert runtime.tpu_visible(tmp_path)
    (tmp_path / "accel0").touch()
    assert runtime.tpu_visible(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert runtime.gpu_visible(tmp_path)
    monkeypatch.setattr(runtime.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert runtime.gpu_visible(tmp_path / "nowhere")


@pytest.mark.parametrize("gpu", [True, False])
def test_start_logs_devices_and_warns_about_an_idle_gpu(gpu, monkeypatch, capsys):
    import jax

    monkeypatch.setattr(runtime, "gpu_visible", lambda: gpu)
    monkeypatch.setattr(runtime, "tpu_visible", lambda: False)
    line = runtime.start()
    n = len(jax.devices())
    assert line == f"backend=cpu devices={n} ({jax.devices()[0].device_kind}) process 0/1"
    out, err = capsys.readouterr()
    assert out == f"osteo-jax: INFO: {line}\n"  # information on stdout: stderr is for errors
    assert ('pip install -e ".[cuda12]"' in err) == gpu
    assert (err.count("\n") == 1) == gpu and "WARNING" in err if gpu else err == ""


def test_compile_cache_dir_precedence(tmp_path):
    flag = argparse.Namespace(compile_cache=str(tmp_path / "flag"), no_compile_cache=False)
    off = argparse.Namespace(compile_cache=None, no_compile_cache=True)
    plain = argparse.Namespace(compile_cache=None, no_compile_cache=False)
    env = {runtime.CACHE_ENV: str(tmp_path / "env")}
    assert runtime.compile_cache_dir(flag, env) == tmp_path / "flag"
    assert runtime.compile_cache_dir(off, env) is None
    assert runtime.compile_cache_dir(plain, env) == tmp_path / "env"
    assert runtime.compile_cache_dir(plain, {runtime.CACHE_ENV: "off"}) is None
    default = runtime.compile_cache_dir(plain, {})
    assert default == Path.home() / ".cache" / "osteo_jax" / "xla"
    # conftest turns it off for every test (and the subprocesses they start)
    assert runtime.compile_cache_dir(plain) is None


def test_every_jax_command_takes_the_cache_flags():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        flags = {s for a in p._actions for s in a.option_strings}
        has = {"--compile-cache", "--no-compile-cache"} <= flags
        assert has == (name in runtime.JAX_COMMANDS), name
    args = parser.parse_args(["train-seg", "--data", "d", "--out", "o", "--no-compile-cache"])
    assert runtime.compile_cache_dir(args) is None


_JIT_ONCE = """
import argparse
import jax
import jax.numpy as jnp
from osteo_jax.cli import runtime

hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
)
runtime.configure_compile_cache(argparse.Namespace(compile_cache=None, no_compile_cache=False))
jax.jit(lambda x: jnp.sin(x) * 2.0)(jnp.ones(3)).block_until_ready()
print("hits", len(hits))
"""


def test_second_process_hits_the_compile_cache(tmp_path):
    cache = tmp_path / "xla"
    env = dict(os.environ, **{runtime.CACHE_ENV: str(cache)})

    def once():
        res = subprocess.run(
            [sys.executable, "-c", _JIT_ONCE], env=env, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return int(res.stdout.split()[-1]), sorted(p.name for p in cache.rglob("*"))

    hits, files = once()
    assert hits == 0 and files  # compiled, and written to the cache
    hits, again = once()
    assert hits >= 1 and again == files  # loaded; nothing new written


@pytest.mark.parametrize(
    "environ, platform, libc, tuned",
    [
        ({}, "linux", "glibc", True),
        ({"PATH": "/bin"}, "linux", "glibc", True),  # the rest of the environment is kept
        ({"GLIBC_TUNABLES": ""}, "linux", "glibc", False),  # the user's choice, even empty
        ({"GLIBC_TUNABLES": runtime.MALLOC_TUNABLES}, "linux", "glibc", False),  # re-executed
        ({}, "linux", "", False),  # musl
        ({}, "darwin", "", False),
        ({}, "win32", "", False),
    ],
)
def test_malloc_tunables_only_on_glibc_and_never_over_the_users(environ, platform, libc, tuned):
    env = runtime.malloc_tunables_env(environ, platform=platform, libc=libc)
    if not tuned:
        assert env is None
    else:
        assert env == {**environ, "GLIBC_TUNABLES": runtime.MALLOC_TUNABLES}
        assert environ.get("GLIBC_TUNABLES") is None  # the caller's mapping is not changed


def test_malloc_tunables_are_ones_glibc_reads():
    # glibc ignores misspelt tunables silently: each name must be one glibc 2.35+ documents.
    names = [kv.split("=")[0] for kv in runtime.MALLOC_TUNABLES.split(":")]
    assert names == ["glibc.malloc.hugetlb", "glibc.malloc.trim_threshold", "glibc.malloc.mmap_max"]


@pytest.mark.skipif(
    runtime.malloc_tunables_env({}) is None, reason="re-execution happens on Linux with glibc"
)
@pytest.mark.parametrize("how", ["module", "own program"])
def test_console_command_reexecutes_with_the_tunables_once(tmp_path, how):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env[runtime.CACHE_ENV] = "off"
    args = ["eval-seg", "--run", str(tmp_path / "none"), "--data", str(tmp_path)]
    if how == "module":
        cmd = [sys.executable, "-m", "osteo_jax.cli", *args]
    else:  # a program of one's own calling main() is never run twice
        code = "import sys; from osteo_jax.cli import main; print('ran'); sys.exit(main())"
        cmd = [sys.executable, "-c", code, *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "none/config.json: not found" in res.stderr
    if how == "module":
        assert "malloc=tuned" in res.stdout
    else:
        assert res.stdout.count("ran") == 1 and "malloc=tuned" not in res.stdout
