"""Reading configs: ``from_dict`` (JSON) and ``load_config`` (every ``--config`` of the CLI)."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path

from osteo_jax.config.experiment import ExperimentConfig
from osteo_jax.config.protocol import ProtocolConfig
from osteo_jax.config.segmenter import SegTrainConfig

T = typing.TypeVar("T")


# Fields renamed since run folders were first written: config type -> {old name: new name}.
# Old config.json files (and the run folders that hold them) keep loading.
RENAMED_FIELDS = {SegTrainConfig: {"seg": "model"}}


def from_dict(cls, data: dict):
    """Rebuilds a (nested) config dataclass from ``dataclasses.asdict`` output (e.g. JSON).

    Lists become tuples where the field is a tuple; unknown keys raise ``ValueError`` so a
    stale or mistyped config file fails loudly.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for old, new in RENAMED_FIELDS.get(cls, {}).items():
        if old in data and new not in data:  # a file written before the rename
            data = {(new if k == old else k): v for k, v in data.items()}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        target = next(
            (t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None
        )
        if target is not None and isinstance(value, dict):
            value = from_dict(target, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _protocol_experiment(proto: ProtocolConfig) -> ExperimentConfig:
    return dataclasses.replace(ExperimentConfig(), name=proto.name, protocol=proto)


# expected type -> the other config types a file may hold instead, and how to get the expected
# one from them: an experiment's segmenter training or protocol; a protocol-only config as the
# default experiment with that protocol.
_CONVERSIONS: dict[type, tuple[tuple[type, Callable], ...]] = {
    SegTrainConfig: ((ExperimentConfig, lambda cfg: cfg.seg),),
    ProtocolConfig: ((ExperimentConfig, lambda cfg: cfg.protocol),),
    ExperimentConfig: ((ProtocolConfig, _protocol_experiment),),
}


def _split_spec(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """``"path.py:arg"`` -> ``(path.py, "arg")``; anything else -> ``(path, None)``."""
    text = os.fspath(spec)
    head, sep, arg = text.rpartition(":")
    if sep and head.endswith(".py"):
        return Path(head), arg
    return Path(text), None


def _from_python(path: Path, arg: str | None):
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ValueError(f"{path}: no get_config() in this file")
    if arg is None:
        return get_config()
    try:
        inspect.signature(get_config).bind(arg)
    except TypeError as err:
        raise ValueError(f"{path}: get_config() takes no argument {arg!r} ({err})") from err
    return get_config(arg)


def _from_json(path: Path, expected_type: type):
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    body = data.get("config", data)  # a run folder's config.json holds {"data", "config"}
    try:
        return from_dict(expected_type, body)
    except (TypeError, ValueError) as err:
        for other, _ in _CONVERSIONS.get(expected_type, ()):
            try:
                return from_dict(other, body)
            except (TypeError, ValueError):
                continue  # not this type either: try the next
        raise ValueError(f"{path}: {err}") from err


def load_config(spec: str | os.PathLike, expected_type: type[T]) -> T:
    """The config a ``--config`` names, as ``expected_type``.

    ``path.py`` is a Python file whose ``get_config()`` returns the config; ``path.py:arg``
    calls ``get_config(arg)`` with the string ``arg`` as it is, commas included (e.g. a table
    row and its size: ``experiments/tables.py:simclr_custom,cpu``). ``path.json`` holds
    ``dataclasses.asdict`` output, bare or under ``"config"`` (a run folder's ``config.json``).
    Where the file holds another config type, the expected one is taken from it: an
    :class:`ExperimentConfig` gives its ``seg`` (a :class:`SegTrainConfig`) or its
    ``protocol`` (a :class:`ProtocolConfig`); a :class:`ProtocolConfig` becomes the default
    :class:`ExperimentConfig` with that protocol and its name.

    Args:
      spec: ``"path.py"``, ``"path.py:arg"`` or ``"path.json"``.
      expected_type: the config class the caller needs.

    Returns:
      An instance of ``expected_type``.

    Raises:
      ValueError: naming the file: it is missing, is neither ``.py`` nor ``.json``, has no
        ``get_config()`` (or one that takes no argument when ``:arg`` is given), holds
        unknown fields, or holds a config that cannot give ``expected_type``.
    """
    path, arg = _split_spec(spec)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    if path.suffix == ".json":
        cfg = _from_json(path, expected_type)
    elif path.suffix == ".py":
        cfg = _from_python(path, arg)
    else:
        raise ValueError(f"{path}: a config is a .py file with get_config() or a .json file")
    if isinstance(cfg, expected_type):
        return cfg
    for other, convert in _CONVERSIONS.get(expected_type, ()):
        if isinstance(cfg, other):
            return convert(cfg)
    accepted = [expected_type] + [other for other, _ in _CONVERSIONS.get(expected_type, ())]
    raise ValueError(
        f"{path}: get_config() returned {type(cfg).__name__}, expected "
        + " or ".join(t.__name__ for t in accepted)
    )
