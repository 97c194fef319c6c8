"""Output folders a command owns: claimed before writing, resumed, replaced only in its own files.

Every command that writes a folder (``synth``, ``segment``, ``train-seg``, ``pretrain``,
``train-cls``, ``evaluate``, ``run`` / ``demo``) claims it with :func:`claim_dir` before its
first write, and checks it with :func:`check_dir` before any costly work:

- absent or empty: created (with its parents) and marked with :data:`MARKER`, a small JSON
  file naming the command;
- marked by the same command: a compatible earlier run, resumed (each command checks its own
  configuration, e.g. :func:`osteo_jax.train.runner.write_config`);
- anything else (files the command did not write, or another command's output): refused, with
  a message that names the folder, unless ``overwrite``.

The one rule for deleting: a command deletes only what it can prove it wrote, that is an entry
of a folder holding its own marker whose name is one of the command's declared outputs
(:data:`OUTPUTS`); a temporary folder it made itself (:func:`partial_dir`: its own naming and a
marker inside, its writer dead); or, when it fails before doing any work, the folder it created
in that invocation while the folder holds nothing but the marker and its config. With
``overwrite`` on a folder it does not own, files under its output names are replaced as it
writes them and user files stay; a folder under one of those names is never removed: the
command stops and names it. A subfolder that is itself a marked output (``run``'s ``seg/``) is
cleared by the same rule, so a user's file inside it survives too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import shutil
import tempfile
from pathlib import Path

from osteo_jax.data.errors import DatasetError

__all__ = [
    "MARKER",
    "OUTPUTS",
    "OutputDir",
    "OutputFolderError",
    "check_dir",
    "claim_dir",
    "partial_dir",
    "publish_partial",
    "remove_stale_partials",
    "writing",
]

MARKER = ".osteo-jax-output.json"
PARTIAL_PREFIX = ".partial-"

# What each command writes at the top of its folder (glob patterns); nothing else is deleted.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "synth": (
        "subjects.csv",
        "images.csv",
        "images",
        "masks",
        "bones.csv",
        "annotations.csv",
        "oracle.json",
        "ceiling.csv",
        "dataset.json",
    ),
    "segment": ("segments.npz", "segments.csv", "segments.json"),
    "train-seg": (
        "config.json",
        "split.json",
        "checkpoints",
        "metrics.jsonl",
        "tensorboard",
        "val_metrics.json",
        "seg_metrics.json",
        "seg_figure.png",
    ),
    "pretrain": ("config.json", "checkpoints", "metrics.jsonl", "tensorboard"),
    "train-cls": (
        "config.json",
        "checkpoints",
        "best",
        "best.json",
        "metrics.jsonl",
        "tensorboard",
    ),
    "evaluate": (
        "seed*",
        "fold*",
        "cls_metrics.json",
        "table.md",
        "roc.png",
        "reliability.png",
        "comparison.json",
        "comparison.md",
    ),
    "run": (
        "config.json",
        "data",
        "seg",
        "segments",
        "cls",
        "radiogrammetry.json",
        "run_summary.json",
        "report.md",
        "report.html",
        "figures",
    ),
}
# Written before any work: a run that fails with only these is removed with its folder.
_SETUP = ("config.json", "split.json")


class OutputFolderError(DatasetError):
    """An output folder the command may not write to; the message names it and the way out."""


def _is_output(command: str, name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in OUTPUTS[command])


def _marker_of(folder: Path) -> str | None:
    """The command that marked ``folder``, or None."""
    try:
        return json.loads((folder / MARKER).read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _legacy_run(folder: Path, command: str, entries: list[Path]) -> bool:
    """An earlier run of ``command`` written before output folders were marked.

    Recognised only when the command writes a ``config.json``, the folder holds one that reads
    as a run record (a JSON object with a ``"config"`` entry), and every entry of the folder is
    one of the command's declared outputs: such a folder is adopted (marked) and resumed, and the
    command's own configuration check still refuses a different run.
    """
    if "config.json" not in OUTPUTS[command] or not (folder / "config.json").is_file():
        return False
    try:
        record = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or "config" not in record:
        return False
    return all(_is_output(command, p.name) for p in entries)


def _owner(folder: Path, command: str, entries: list[Path]) -> str | None:
    """The command that owns ``folder``: its marker, or ``command`` for a legacy run of it."""
    owner = _marker_of(folder)
    if owner is None and entries and _legacy_run(folder, command, entries):
        return command
    return owner


def _entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name != MARKER)


def _unused(path: Path) -> bool:
    """A setup file, an empty file or an empty folder: nothing a failed run would miss."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return not any(path.iterdir())
    return path.name in _SETUP or path.stat().st_size == 0


def _remove(path: Path) -> None:
    """Removes one proven output: a link or file, a marked folder by the rule, else the tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    command = _marker_of(path)
    if command is None or command not in OUTPUTS:
        shutil.rmtree(path)  # an unmarked output folder of its owner (checkpoints/, images/)
        return
    for child in _entries(path):
        if _is_output(command, child.name) or is_partial(child):
            _remove(child)
    if not _entries(path):  # a user's file inside keeps the folder and its marker
        (path / MARKER).unlink(missing_ok=True)
        path.rmdir()


def check_dir(out: str | os.PathLike, command: str, *, overwrite: bool = False) -> Path:
    """Refuses ``out`` if ``command`` may not write to it; changes nothing.

    Args:
      out: the output folder.
      command: the command's name, a key of :data:`OUTPUTS`.
      overwrite: the user's ``--overwrite``.

    Returns:
      ``out`` as a path.

    Raises:
      OutputFolderError: ``out`` is a file; it holds files ``command`` did not write (and not
        ``overwrite``); or, with ``overwrite``, a folder under one of the command's output
        names that the command cannot prove it wrote.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out}: exists and is not a folder")
    entries = _entries(out)
    owner = _owner(out, command, entries)
    if owner == command or not entries:
        return out
    if not overwrite:
        what = (
            f"the output of `osteo-jax {owner}`"
            if owner
            else f"files that `osteo-jax {command}` did not write"
        )
        raise OutputFolderError(
            f"{out}: folder is not empty and holds {what}; choose a new output folder, or pass "
            f"--overwrite to replace only the files `osteo-jax {command}` writes"
        )
    for p in entries:
        if _is_output(command, p.name) and p.is_dir() and not p.is_symlink():
            raise OutputFolderError(
                f"{p}: not written by `osteo-jax {command}` (no {MARKER} in {out}), so "
                "--overwrite will not delete it; move it away or choose a new output folder"
            )
    return out


@dataclasses.dataclass(frozen=True)
class OutputDir:
    """A claimed output folder.

    Attributes:
      path: the folder.
      command: the command that owns it.
      created: the topmost folder this claim created (``path`` or a parent), or None.
      resumed: it already held output of the same command, kept for resuming.
    """

    path: Path
    command: str
    created: Path | None
    resumed: bool

    def remove(self, name: str) -> None:
        """Deletes the output ``name`` of this folder (a stale stage), by the module's rule.

        Raises:
          OutputFolderError: ``name`` is not one of the command's outputs.
        """
        if not _is_output(self.command, name):
            raise OutputFolderError(f"{self.path / name}: not an output of {self.command}")
        if (self.path / name).exists() or (self.path / name).is_symlink():
            _remove(self.path / name)

    def discard_if_unused(self) -> None:
        """Removes the folder this claim created if it holds nothing but setup files.

        Setup files are ``config.json`` and ``split.json``; empty files and folders (a metrics
        log opened, a checkpoint folder made) count as unused too.
        """
        if self.created is None or not self.path.is_dir():
            return
        if not all(_unused(p) for p in _entries(self.path)):
            return
        for p in _entries(self.path):
            p.rmdir() if p.is_dir() else p.unlink()
        (self.path / MARKER).unlink(missing_ok=True)
        folder = self.path
        while True:  # the folder and the parents this claim made, innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
            if folder == self.created or folder.parent == folder:
                break
            folder = folder.parent

    @contextlib.contextmanager
    def discarded_on_error(self):
        """Runs the block; on an exception, :meth:`discard_if_unused` and re-raises."""
        try:
            yield self
        except BaseException:
            self.discard_if_unused()
            raise


def claim_dir(out: str | os.PathLike, command: str, *, overwrite: bool = False) -> OutputDir:
    """Claims ``out`` for ``command``: checks it, creates and marks it, clears it if asked.

    With ``overwrite`` the command's own earlier outputs (marked folder) are deleted first; in a
    folder it does not own, the files under its output names are deleted (it writes them anew)
    and nothing else.

    Args:
      out: the output folder.
      command: the command's name, a key of :data:`OUTPUTS`.
      overwrite: start afresh instead of resuming, replacing the command's files.

    Returns:
      The claimed folder.

    Raises:
      OutputFolderError: as :func:`check_dir`.
    """
    out = check_dir(out, command, overwrite=overwrite)
    entries = _entries(out)
    owner = _owner(out, command, entries)
    created = None
    if not out.exists():
        created = out
        while not created.parent.exists():
            created = created.parent
        out.mkdir(parents=True)
    if overwrite:
        for p in entries:
            if _is_output(command, p.name) or (owner == command and is_partial(p)):
                _remove(p)
    if _marker_of(out) != command:
        (out / MARKER).write_text(json.dumps({"command": command}) + "\n")
    return OutputDir(out, command, created, owner == command and bool(entries) and not overwrite)


def is_partial(path: Path) -> bool:
    """Whether ``path`` is a temporary folder made by :func:`partial_dir`."""
    return path.name.startswith(PARTIAL_PREFIX) and _marker_of(path) == "partial"


def partial_dir(out: Path) -> Path:
    """A new temporary folder inside the claimed ``out``, marked with the writer's process id."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=out))
    (tmp / MARKER).write_text(json.dumps({"command": "partial", "pid": os.getpid()}) + "\n")
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_partials(out: Path) -> list[Path]:
    """Deletes the :func:`partial_dir` folders in ``out`` whose writer is no longer running.

    Returns:
      The folders deleted.
    """
    stale = []
    for p in _entries(out):
        if is_partial(p):
            try:
                pid = int(json.loads((p / MARKER).read_text())["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid == os.getpid() or not _alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                stale.append(p)
    return stale


@contextlib.contextmanager
def writing(claim: OutputDir):
    """Yields a new :func:`partial_dir` of ``claim``; on failure removes it and an unused claim.

    A killed writer's partial folders are removed first (:func:`remove_stale_partials`).
    """
    remove_stale_partials(claim.path)
    tmp = partial_dir(claim.path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        claim.discard_if_unused()
        raise


def publish_partial(tmp: Path, out: Path, last: tuple[str, ...] = ()) -> None:
    """Moves the finished entries of ``tmp`` into ``out`` (``last`` ones last), then drops ``tmp``.

    Each entry is renamed over the same name in ``out``; a folder there is one the claim
    already removed, so only the command's own files are replaced.

    Raises:
      OutputFolderError: ``out`` still holds a folder under an entry's name.
    """
    names = sorted(p.name for p in _entries(tmp))
    names = [n for n in names if n not in last] + [n for n in last if n in names]
    for name in names:
        dest = out / name
        if dest.is_dir() and not dest.is_symlink():
            raise OutputFolderError(f"{dest}: exists; not replaced (move it away)")
        os.replace(tmp / name, dest)
    shutil.rmtree(tmp, ignore_errors=True)
