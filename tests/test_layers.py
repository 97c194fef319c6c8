"""The layering of the package, read from every module's imports (ast; no module is imported).

    cli -> pipeline -> train | eval -> models | losses -> data -> config

A module may import its own layer and the layers below; two layers on the same level (train and
eval, models and losses) never import each other; data/ imports nothing but data/ and config.
Imports inside functions count as much as those at module top. No two files may import each
other, directly or round a longer circle. Only written imports are edges: importing
``osteo_jax.data.folder`` also runs ``osteo_jax/data/__init__.py``, but that is not an edge.
"""

import ast
from pathlib import Path

PACKAGE = "osteo_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Layer -> level; a module imports only its own layer or a layer of a lower level.
LEVELS = {
    "config": 0,
    "data": 1,
    "models": 2,
    "losses": 2,
    "train": 3,
    "eval": 3,
    "pipeline": 4,
    "cli": 5,
}


def _module_files(root: Path) -> dict[str, Path]:
    """``dotted module name -> file`` for every ``.py`` file under ``root`` (a package)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> str | None:
    """The layer of a module of the package (None for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path, module: str, modules: dict[str, Path]):
    """Yields ``(line, written import, target module)`` for every import of the package.

    ``target`` is None when the module is not a file of the package (a stale path).
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    target = alias.name if alias.name in modules else None
                    yield node.lineno, f"import {alias.name}", target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                written = f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                sub = f"{base}.{alias.name}"
                target = sub if sub in modules else (base if base in modules else None)
                yield node.lineno, written, target


def _rule_broken(src: str | None, dst: str | None) -> str | None:
    """Why an import from layer ``src`` of layer ``dst`` is not allowed (None: allowed)."""
    if dst is None:  # the package root (its version) may be read by anyone
        return None
    if src is None:
        return "the package root imports nothing of the package"
    if src not in LEVELS or dst not in LEVELS:
        unknown = src if src not in LEVELS else dst
        return f"{unknown}/ is not a layer (add it to LEVELS in tests/test_layers.py)"
    if src == dst or LEVELS[dst] < LEVELS[src]:
        return None
    if src == "data":
        return "data/ imports nothing but data/ and config"
    if LEVELS[dst] > LEVELS[src]:
        return f"{src}/ is below {dst}/"
    return f"{src}/ and {dst}/ are on one level and never import each other"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted; sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def check(root: Path = ROOT) -> tuple[list[str], list[list[str]]]:
    """``(layering problems "file:line: import (why)", import cycles as lists of files)``."""
    modules = _module_files(root)
    problems = []
    graph: dict[str, set[str]] = {str(p.relative_to(root.parent)): set() for p in modules.values()}
    for module, path in modules.items():
        rel = str(path.relative_to(root.parent))
        for line, written, target in _imports(path, module, modules):
            if target is None:
                problems.append(f"{rel}:{line}: {written} (no such module in the package)")
                continue
            why = _rule_broken(_layer(module), _layer(target))
            if why:
                problems.append(f"{rel}:{line}: {written} ({why})")
            dst = str(modules[target].relative_to(root.parent))
            if dst != rel:
                graph[rel].add(dst)
    return problems, _cycles(graph)


def test_every_import_follows_the_layering():
    problems, _ = check()
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_import_cycle_between_files():
    _, cycles = check()
    assert not cycles, "import cycles (files importing each other):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_every_module_is_in_a_layer():
    layers = {_layer(m) for m in _module_files(ROOT)} - {None}
    assert layers == set(LEVELS), f"not layers: {sorted(layers - set(LEVELS))}"


def test_the_checker_finds_each_kind_of_problem(tmp_path):
    """A small package with one of each problem: the checker names file, line and import."""
    pkg = tmp_path / PACKAGE
    files = {
        "__init__.py": "",
        "config/__init__.py": "",
        "data/__init__.py": "",
        "data/a.py": "from osteo_jax.config import X\nfrom osteo_jax.data import b\n",
        "data/b.py": "def f():\n    from osteo_jax.data.a import x\n",
        "data/c.py": "import osteo_jax.models.m\n",
        "models/__init__.py": "",
        "models/m.py": "from osteo_jax.config import X\n",
        "train/seg_loop.py": "def g():\n    from osteo_jax.eval.metrics import f1\n",
        "eval/metrics.py": "from . import gone\nfrom osteo_jax.pipeline import run\n",
        "pipeline/run.py": "from osteo_jax.cli import main\n",
        "cli/__init__.py": "from osteo_jax.pipeline.run import go\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    problems, cycles = check(pkg)
    assert problems == [
        "osteo_jax/data/c.py:1: import osteo_jax.models.m "
        "(data/ imports nothing but data/ and config)",
        "osteo_jax/eval/metrics.py:1: from . import gone (no such module in the package)",
        "osteo_jax/eval/metrics.py:2: from osteo_jax.pipeline import run "
        "(eval/ is below pipeline/)",
        "osteo_jax/pipeline/run.py:1: from osteo_jax.cli import main (pipeline/ is below cli/)",
        "osteo_jax/train/seg_loop.py:2: from osteo_jax.eval.metrics import f1 "
        "(train/ and eval/ are on one level and never import each other)",
    ]
    assert cycles == [
        ["osteo_jax/cli/__init__.py", "osteo_jax/pipeline/run.py"],
        ["osteo_jax/data/a.py", "osteo_jax/data/b.py"],
    ]
