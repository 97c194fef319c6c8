"""Property test: a mutated dataset folder is either read or refused in one line naming a file.

A valid tiny folder (4 subjects, 32 px) is mutated (bytes of images and masks, CSV cells,
header rows, encodings, delimiters, paths, symbolic links, deleted files, mask values) and
``validate`` and ``train-seg`` (one step of a tiny U-Net) are run on it through the real CLI.
Every run exits 0, or exits 2 with one line ``osteo-jax <command>: error: <file>: ...``;
never a traceback; nothing outside the output folder changes, and a refused ``train-seg``
leaves no output folder. Whatever ``validate`` refuses, ``train-seg`` refuses too (one set of
rules). A training step costs ~10 s of compilation on CPU, so at most ``_TRAIN_BUDGET``
examples that pass ``validate`` are trained; the others go as far as the loader (everything
``train-seg`` reads before its first step). ``predict`` (with a tiny finished ``run``, trained
once per module) reads the mutated radiographs of the first ``_PREDICT_BUDGET`` examples whose
images were touched (bytes, truncation, links, deletion), under the same property. Run by
``make e2e``; about two minutes.
"""

import contextlib
import csv
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.e2e

IDS = ("S0000", "S0001", "S0002", "S0003")
FILES = [f"images/{i}.png" for i in IDS] + [f"masks/exact/{i}.png" for i in IDS[:2]]
CSVS = ("subjects.csv", "images.csv")
CELLS = [
    "",
    " ",
    "../outside.png",
    "images/../../outside.png",
    "images/S0001.png",
    "missing.png",
    "S0001",
    "a/b",
    "..",
    "nan",
    "inf",
    "-3.1",
    "2",
    "1",
    "val",
    "x" * 300,
    "é",
    '"',
]
TINY = (
    '{"model": {"features": [4, 8], "head_hidden": 4, "image_size": 16, "form": "unet", '
    '"num_experts": 1, "num_samples": 1}, "batch_size": 2, "epochs": 1, "max_steps": 1, '
    '"val_fraction": 0.0, "warmup_steps": 1}'
)
_TRAIN_BUDGET = [2]  # examples that run a real training step
_PREDICT_BUDGET = [10]  # examples whose touched images go through predict
_PREDICT_CODES: list[int] = []  # predict's exit codes, checked by the test after the property


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory) -> Path:
    from osteo_jax.config import CohortConfig, PhysicsConfig, SynthConfig
    from osteo_jax.data.synth.synthetic import write_dataset

    out = tmp_path_factory.mktemp("fuzz") / "ds"
    cfg = SynthConfig(cohort=CohortConfig(n_subjects=4), physics=PhysicsConfig(size=32))
    write_dataset(cfg, out, workers=1, progress=False)
    (out.parent / "config.json").write_text(TINY)
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished tiny ``run`` folder (the experiment tests' config) for ``predict``."""
    import dataclasses

    from test_experiment import TINY

    from osteo_jax.pipeline.experiment import run_experiment

    proto = TINY.protocol  # one classifier seed and no report: all that predict needs
    cfg = dataclasses.replace(
        TINY, protocol=dataclasses.replace(proto, cls=dataclasses.replace(proto.cls, seeds=(0,)))
    )
    out = tmp_path_factory.mktemp("fuzz_run") / "run"
    run_experiment(cfg, out, workers=1, progress=False, report=False)
    return out


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter=",") if r]
    return rows[0], rows[1:]


def _write(path: Path, header, rows, *, encoding="utf-8", delimiter=",") -> None:
    with open(path, "w", newline="", encoding=encoding, errors="replace") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


mutation = st.one_of(
    st.tuples(
        st.just("bytes"),
        st.sampled_from(FILES),
        st.floats(0, 1),
        st.integers(0, 255),
    ),
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.floats(0, 0.99)),
    st.tuples(
        st.just("cell"),
        st.sampled_from(CSVS),
        st.integers(0, 3),
        st.integers(0, 7),
        st.one_of(st.sampled_from(CELLS), st.text(st.characters(exclude_categories=["Cs"]))),
    ),
    st.tuples(
        st.just("header"),
        st.sampled_from(CSVS),
        st.sampled_from(["drop", "duplicate", "blank", "rename", "none", "twice"]),
    ),
    st.tuples(
        st.just("encoding"),
        st.sampled_from(CSVS),
        st.sampled_from(["utf-8-sig", "utf-16", "latin-1", "cp1252"]),
    ),
    st.tuples(st.just("delimiter"), st.sampled_from(CSVS), st.sampled_from([";", "\t"])),
    st.tuples(
        st.just("link"),
        st.sampled_from(FILES),
        st.sampled_from(["outside", "inside", "dangling", "loop"]),
    ),
    st.tuples(st.just("delete"), st.sampled_from([*FILES, *CSVS, "masks/exact"])),
    st.tuples(st.just("mask"), st.sampled_from(IDS), st.sampled_from([0, 9, 255])),
)


def _apply(ds: Path, m: tuple) -> None:
    """Applies one mutation; one that no longer applies (an earlier one broke it) is a no-op."""
    try:
        _mutate(ds, m)
    except (OSError, UnicodeDecodeError, IndexError, csv.Error):
        pass


def _mutate(ds: Path, m: tuple) -> None:
    kind = m[0]
    if kind in ("bytes", "truncate"):
        p = ds / m[1]
        data = bytearray(p.read_bytes())
        if not data:
            return
        i = min(int(m[2] * len(data)), len(data) - 1)
        if kind == "bytes":
            data[i] = m[3]
        else:
            data = data[:i]
        p.write_bytes(bytes(data))
    elif kind == "cell":
        header, rows = _rows(ds / m[1])
        rows[m[2] % len(rows)][m[3] % len(header)] = m[4]
        _write(ds / m[1], header, rows)
    elif kind == "header":
        header, rows = _rows(ds / m[1])
        if m[2] == "drop":
            header, rows = header[1:], [r[1:] for r in rows]
        elif m[2] == "duplicate":
            header[-1] = header[0]
        elif m[2] == "blank":
            header[0] = ""
        elif m[2] == "rename":
            header[0] = header[0].upper()
        elif m[2] == "twice":
            rows = [header, *rows]
        _write(ds / m[1], header, rows if m[2] != "none" else rows[1:])
    elif kind == "encoding":
        header, rows = _rows(ds / m[1])
        if m[2] in ("latin-1", "cp1252"):  # a non-ASCII byte that is not UTF-8
            rows[0][0] = rows[0][0] + "é"
        _write(ds / m[1], header, rows, encoding=m[2])
    elif kind == "delimiter":
        header, rows = _rows(ds / m[1])
        _write(ds / m[1], header, rows, delimiter=m[2])
    elif kind == "link":
        p = ds / m[1]
        p.unlink()
        target = {
            "outside": ds.parent / "outside.png",
            "inside": ds / "images" / "S0003.png",
            "dangling": ds / "nowhere.png",
            "loop": p,
        }[m[2]]
        os.symlink(target, p)
    elif kind == "delete":
        p = ds / m[1]
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    elif kind == "mask":
        import numpy as np

        from osteo_jax.data.folder import write_labels

        p = ds / "masks" / "annotator_0" / f"{m[1]}.png"
        if p.exists():
            write_labels(p, np.full((32, 32), m[2], np.uint8))


def _tree(root: Path, skip: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) != skip]
        for name in files + [d for d in dirs if Path(dirpath, d).is_symlink()]:
            p = Path(dirpath, name)
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            else:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(argv: list[str]) -> tuple[int, str]:
    from osteo_jax.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        except Exception as e:  # a traceback: the property fails, with the mutation
            raise AssertionError(f"{argv[0]}: traceback {type(e).__name__}: {e}") from e
    return rc, err.getvalue().strip()


def _check_refusal(command: str, rc: int, err: str, ws: Path) -> None:
    assert rc in (0, 2), (command, rc, err)
    if rc == 2:
        assert "\n" not in err and err.startswith(f"osteo-jax {command}: error: "), err
        assert str(ws) in err, f"no file named: {err}"


@settings(
    max_examples=45,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_folder_is_read_or_refused_in_one_line(valid_dir, trained_run, mutations):
    from osteo_jax.data.pipeline import load_seg_arrays

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        ws = Path(tmp)
        ds = ws / "ds"
        shutil.copytree(valid_dir, ds, symlinks=True)
        shutil.copy(valid_dir / "images" / "S0000.png", ws / "outside.png")
        for m in mutations:
            _apply(ds, m)
        out = ws / "run"
        before = _tree(ws, out)
        rc_v, err_v = _run(["validate", "--data", str(ds)])
        _check_refusal("validate", rc_v, err_v, ws)
        assert _tree(ws, out) == before

        touched = [m for m in mutations if m[0] in ("bytes", "truncate", "link", "delete")]
        images = sorted({m[1] for m in touched if m[1].startswith("images/")})
        if images and _PREDICT_BUDGET[0] > 0:
            _PREDICT_BUDGET[0] -= 1
            rc_p, err_p = _run(
                ["predict", *[str(ds / i) for i in images], "--run", str(trained_run)]
            )
            _check_refusal("predict", rc_p, err_p, ws)
            _PREDICT_CODES.append(rc_p)
            assert _tree(ws, out) == before, "predict changed files"

        if rc_v == 0 and _TRAIN_BUDGET[0] <= 0:
            load_seg_arrays(ds, 16, workers=1)  # what train-seg reads before training
            return
        if rc_v == 0:
            _TRAIN_BUDGET[0] -= 1
        config = str(valid_dir.parent / "config.json")
        rc_t, err_t = _run(["train-seg", "--data", str(ds), "--out", str(out), "--config", config])
        _check_refusal("train-seg", rc_t, err_t, ws)
        assert _tree(ws, out) == before, "train-seg changed files outside its output folder"
        if rc_v == 2:
            assert rc_t == 2, f"validate refused ({err_v}) but train-seg ran"
        if rc_t == 2:
            assert not out.exists(), "a refused train-seg left an output folder"


def test_predict_was_exercised():
    """The property above ran predict on mutated radiographs (runs after it, same module)."""
    assert _PREDICT_CODES, "no example touched an image"
    print(f"predict exit codes: {_PREDICT_CODES}")
