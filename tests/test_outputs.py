"""Output folders are never destroyed; every error is one line (issue 13, items 2 and 3)."""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from osteo_jax.cli import main
from osteo_jax.config import ExperimentConfig
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.outdir import MARKER, OutputFolderError, check_dir, claim_dir

SYNTH = ["--subjects", "4", "--size", "64", "--seed", "2", "--annotators", "1", "--workers", "1"]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def user_folder(tmp_path):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "notes.txt").write_text("my notes")
    (out / "report.md").write_text("my report")
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "data"
    assert main(["synth", *SYNTH, "--out", str(out)]) == 0
    return out


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"osteo-jax {command}: error: "), err
    return err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--config", "CONFIG"],
        ["demo"],
        ["train-seg", "--data", "DATA"],
        ["segment", "--data", "DATA", "--source", "exact"],
        ["evaluate", "--segments", "SEGMENTS"],
        ["pretrain", "--segments", "SEGMENTS"],
        ["train-cls", "--segments", "SEGMENTS"],
    ],
    ids=lambda a: a[0],
)
def test_a_user_folder_survives_every_command(argv, user_folder, tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dataclasses.asdict(ExperimentConfig())))
    subs = {"CONFIG": str(config), "DATA": str(tmp_path / "d"), "SEGMENTS": str(tmp_path / "s")}
    argv = [subs.get(a, a) for a in argv]
    before = _tree(user_folder)
    assert main([*argv, "--out", str(user_folder)]) == 2
    err = _one_error_line(capsys, argv[0])
    assert f"{user_folder}: folder is not empty" in err and "--overwrite" in err
    assert _tree(user_folder) == before
    # --overwrite never deletes a folder the command did not write: it names it and stops.
    if argv[0] in ("run", "demo"):
        assert main([*argv, "--out", str(user_folder), "--overwrite"]) == 2
        err = _one_error_line(capsys, argv[0])
        assert f"{user_folder / 'data'}: not written by `osteo-jax run`" in err  # demo: a run
        assert _tree(user_folder) == before


def test_failed_train_seg_leaves_no_folder(dataset, tmp_path, capsys):
    out = tmp_path / "new" / "seg"
    argv = ["train-seg", "--data", str(dataset), "--out", str(out), "--size", "32"]
    assert main([*argv, "--batch-size", "64"]) == 2  # fewer images than one batch
    assert "fewer than one batch" in _one_error_line(capsys, "train-seg")
    assert not (tmp_path / "new").exists()
    assert main(["train-seg", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert not (tmp_path / "new").exists()


def test_segment_overwrite_replaces_only_its_files(dataset, tmp_path, capsys):
    out = tmp_path / "segs"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "segments.csv").write_text("a user's file under segment's name")
    argv = ["segment", "--data", str(dataset), "--source", "exact", "--size", "16"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "folder is not empty" in _one_error_line(capsys, "segment")
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert (out / "keep.txt").read_text() == "mine"
    assert (out / "segments.csv").read_text().startswith("image_id")
    assert (out / "segments.json").exists() and (out / MARKER).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".partial-")]
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 2  # its own finished output: not redone
    assert f"{out}: holds segments; pass --overwrite" in _one_error_line(capsys, "segment")
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_of_an_own_run_deletes_only_its_outputs(tmp_path):
    out = tmp_path / "run"
    claim_dir(out, "train-seg")
    (out / "checkpoints" / "7").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    (out / "mine.txt").write_text("mine")
    assert claim_dir(out, "train-seg").resumed  # a compatible earlier run: kept
    assert (out / "checkpoints" / "7").is_dir()
    claim_dir(out, "train-seg", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "mine.txt"]
    # Another command's folder is not this one's: refused, even marked by osteo-jax.
    with pytest.raises(OutputFolderError, match="the output of `osteo-jax train-seg`"):
        check_dir(out, "pretrain")


def test_nested_own_folder_keeps_a_user_file(tmp_path):
    out = tmp_path / "run"
    claim = claim_dir(out, "run")
    seg = claim_dir(out / "seg", "train-seg").path
    (seg / "metrics.jsonl").write_text("{}\n")
    (seg / "mine.txt").write_text("mine")
    (out / "report.md").write_text("# report")
    claim.remove("seg")
    assert sorted(p.name for p in seg.iterdir()) == [MARKER, "mine.txt"]
    claim_dir(out, "run", overwrite=True)
    assert (seg / "mine.txt").read_text() == "mine" and not (out / "report.md").exists()
    with pytest.raises(OutputFolderError):
        claim.remove("mine.txt")


def test_a_file_is_not_an_output_folder(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(OutputFolderError, match="exists and is not a folder"):
        claim_dir(path, "synth")


def test_predict_refuses_an_existing_file_and_a_folder(tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    existing = tmp_path / "pred.json"
    existing.write_text("old")
    base = ["predict", str(image), "--run", str(tmp_path / "run")]
    assert main([*base, "--out", str(existing)]) == 2
    assert f"{existing}: exists; pass --overwrite" in _one_error_line(capsys, "predict")
    assert existing.read_text() == "old"
    for flag in ("--out", "--figure"):
        assert main([*base, flag, str(tmp_path)]) == 2
        assert f"{tmp_path}: is a folder; {flag} takes" in _one_error_line(capsys, "predict")
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_json_into_a_folder_leaves_no_tmp(tmp_path):
    from osteo_jax.data.folder import write_json

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        write_json(tmp_path / "d", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize(
    "error, code, text",
    [
        (DatasetError("images.csv, row 3: bad id"), 2, "error: images.csv, row 3: bad id"),
        (ValueError("line one\nline two"), 2, "error: line one line two"),
        (FileNotFoundError(2, "No such file or directory", "/x/y"), 2, "error: /x/y: No such"),
        (KeyError("image_id"), 1, "internal error (a bug in osteo-jax"),
        (RuntimeError("boom"), 1, "RuntimeError: boom; full traceback in "),
    ],
)
def test_errors_are_one_line(monkeypatch, tmp_path, capsys, error, code, text):
    def fail(args):
        raise error

    monkeypatch.setattr("osteo_jax.cli.data.cmd_validate", fail)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert main(["validate", "--data", "d"]) == code
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and err.startswith("osteo-jax validate: ")
    assert text in err
    if code == 1:
        path = Path(err.rsplit("full traceback in ", 1)[1])
        assert path.parent == tmp_path and "Traceback" in path.read_text()


def test_a_bug_writes_its_traceback_into_the_run_folder(monkeypatch, tmp_path, capsys):
    out = claim_dir(tmp_path / "run", "train-seg").path

    def fail(args):
        raise RuntimeError("boom")

    monkeypatch.setattr("osteo_jax.cli.train.cmd_train_seg", fail)
    assert main(["train-seg", "--data", "d", "--out", str(out)]) == 1
    assert f"full traceback in {out / 'osteo-jax-traceback.txt'}" in capsys.readouterr().err
    assert "RuntimeError: boom" in (out / "osteo-jax-traceback.txt").read_text()


def test_ctrl_c_is_one_line_and_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("osteo_jax.cli.data.cmd_validate", interrupted)
    assert main(["validate", "--data", "d"]) == 130
    assert capsys.readouterr().err.strip() == "osteo-jax validate: interrupted"


@pytest.mark.parametrize("command", ["run", "train-seg", "evaluate"])
def test_a_yaml_config_is_one_line(command, tmp_path, capsys):
    config = tmp_path / "x.yaml"
    config.write_text("seed: 1\n")
    argv = {
        "run": ["run", "--out", str(tmp_path / "o")],
        "train-seg": ["train-seg", "--data", "d", "--out", str(tmp_path / "o")],
        "evaluate": ["evaluate", "--segments", "s", "--out", str(tmp_path / "o")],
    }[command]
    assert main([*argv, "--config", str(config)]) == 2
    assert f"{config}: a config is a .py file" in _one_error_line(capsys, command)
    assert not (tmp_path / "o").exists()


def test_an_image_bomb_is_one_line(dataset, tmp_path, capsys):
    import shutil
    import struct
    import zlib

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 60000, 60000, 16, 0, 0, 0, 0)
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    bomb = data / "images" / "S0000.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    assert main(["validate", "--data", str(data)]) == 2
    assert "S0000.png" in _one_error_line(capsys, "validate")


def test_a_run_written_before_markers_is_adopted_only_if_it_is_all_the_commands(tmp_path):
    old = tmp_path / "old_run"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.json").write_text('{"data": "d", "config": {"epochs": 1}}')
    (old / "metrics.jsonl").write_text("")
    claim = claim_dir(old, "train-seg")  # a train-seg run of an older version: resumed
    assert (old / MARKER).exists() and (old / "checkpoints").is_dir() and claim.resumed
    with pytest.raises(OutputFolderError, match="holds the output of `osteo-jax train-seg`"):
        check_dir(old, "run")  # now marked as train-seg output: not a `run` folder
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_text('{"data": "d", "config": {}}')
    (mixed / "notes.txt").write_text("mine")  # a user's file: not adopted
    with pytest.raises(OutputFolderError, match="did not write"):
        check_dir(mixed, "train-seg")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text('{"epochs": 1}')  # not a run record
    with pytest.raises(OutputFolderError, match="did not write"):
        check_dir(bare, "train-seg")
