"""The package's import structure: no cycles, and the data layer loads no model, loop or evaluation.

The graph is read from the source (``ast``), so a test run does not depend on what happens
to be imported already. An edge is an ``import`` or ``from ... import`` of a cnnkit module
(``from a import b`` counts ``a.b`` when that is a module, else ``a``), as
``../shared/hooks/contracts.py`` reads them. Two kinds:

* module-level imports (including those inside a module-level ``if`` or ``try``): they
  run when the module is imported, so a cycle among them is a partly initialised module
  waiting to happen. These must be acyclic, without exception.
* function-level (lazy) imports: they run later, but a cycle through one still means two
  modules that each need the other, i.e. one concept split across two places. They count
  too: the graph of both kinds together must be acyclic, except for the cycles listed in
  :data:`KNOWN_LAZY_CYCLES` (each with its reason), which the test also checks still exist,
  so the list can only shrink.

Not edges: imports under ``if TYPE_CHECKING:`` (they never run; they serve annotations) and
the implicit import of a module's parent package.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Cycles that go through a function-level import and are not broken yet, by their members.
# Remove an entry when its cycle is gone (test_no_import_cycles fails until it is).
KNOWN_LAZY_CYCLES: dict[frozenset[str], str] = {
    frozenset({"cnnkit.inference.predictor", "cnnkit.inference.runtime", "cnnkit.inference.loading",
               "cnnkit.inference.export"}):
        "Predictor.load (public API) calls runtime.load_predictor, which builds Predictors",
}  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "cnnkit").rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree: ast.Module) -> tuple[list[ast.AST], list[ast.AST]]:
    """(module-level, function-level) import statements, leaving out ``if TYPE_CHECKING:`` blocks."""
    top: list[ast.AST] = []
    lazy: list[ast.AST] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            (lazy if in_function else top).append(node)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return top, lazy


def _targets(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    package = module if is_package else module.rsplit(".", 1)[0]
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        if name and name != module:
            found.add(name)
    return found


def import_graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level graph, graph of all imports) over cnnkit's modules."""
    known = _modules()
    top_graph: dict[str, set[str]] = {m: set() for m in known}
    all_graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        top, lazy = _import_nodes(ast.parse(path.read_text(encoding="utf-8")))
        for node in top:
            top_graph[module] |= _targets(node, module, path.name == "__init__.py", known)
        all_graph[module] |= top_graph[module]
        for node in lazy:
            all_graph[module] |= _targets(node, module, path.name == "__init__.py", known)
    return top_graph, all_graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(frozenset(members))
    return found


def test_the_graph_sees_real_imports() -> None:
    """The reader finds edges of every kind (or the cycle tests below would pass on nothing)."""
    top, every = import_graphs()
    assert "cnnkit.data.spec" in top["cnnkit.data.transforms"]  # from cnnkit.data.spec import ...
    assert "cnnkit.config.augment" in top["cnnkit.config.resolve"]
    assert "cnnkit.recipes" in every["cnnkit.config.resolve"] - top["cnnkit.config.resolve"]  # a lazy one
    assert "cnnkit.data.folder.decode" not in every["cnnkit.data.folder.skipped"]  # TYPE_CHECKING only


def test_no_import_cycles() -> None:
    top, every = import_graphs()
    assert cycles(top) == [], "module-level import cycles"
    found = set(cycles(every))
    new = [sorted(c) for c in found - set(KNOWN_LAZY_CYCLES)]
    assert not new, f"import cycles through function-level imports: {new}"
    gone = [sorted(c) for c in set(KNOWN_LAZY_CYCLES) - found]
    assert not gone, f"these cycles are gone: remove them from KNOWN_LAZY_CYCLES: {gone}"


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_data_loads_no_model_loop_or_evaluation() -> None:
    """``import cnnkit.data`` (and every module under it) leaves models, engine and evaluation unloaded."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import cnnkit.data\n"
        "for info in pkgutil.walk_packages(cnnkit.data.__path__, 'cnnkit.data.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['cnnkit', 'engine'], ['cnnkit', 'models'], ['cnnkit', 'evaluation']))))\n"
        "print(len([m for m in sys.modules if m.startswith('cnnkit.data.')]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    loaded, count = done.stdout.splitlines()
    assert loaded == ""
    assert int(count) >= 20  # every data module was imported (builder, cache, audit, folder...)


def test_resolving_a_frozen_backbone_config_loads_no_torch() -> None:
    """The config asks whether a frozen-backbone run's images are augmented (then its head
    trains on cached features with their own defaults) from the torch-free preset table."""
    code = (
        "import sys\n"
        "from cnnkit.config import resolve_config\n"
        "frozen = {'data.name': 'x', 'model.name': 'timm:efficientnet_lite0', 'train.freeze': True}\n"
        "plain = resolve_config(overrides=frozen)\n"
        "flipped = resolve_config(overrides={**frozen, 'data.augment': 'flip'})\n"
        "print(plain.train.epochs, flipped.train.epochs, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    from cnnkit.config import TrainConfig
    from cnnkit.config.resolve import CACHED_HEAD_DEFAULTS

    assert done.stdout.split() == [str(CACHED_HEAD_DEFAULTS["train.epochs"]), str(TrainConfig().epochs), "False"]


def test_each_augmentation_preset_is_defined_once() -> None:
    from cnnkit.config import AUGMENT_PRESETS
    from cnnkit.config.augment import PRESETS
    from cnnkit.data import transforms

    assert transforms.AUGMENT_PRESETS is PRESETS and AUGMENT_PRESETS == tuple(PRESETS)
    assert transforms.get_augment("airbench") == PRESETS["airbench"]
