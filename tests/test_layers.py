"""The layout shows the architecture: layers import only downwards, no module imports itself
back through others (type-only imports included), and no folder grows past a readable size.

docs/ARCHITECTURE.md draws the same layers; `LAYERS` here is the rule it states.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"vlmd": ROOT / "vlmd", "vlmd_agent": ROOT / "agent" / "vlmd_agent"}
MAX_MODULES_PER_FOLDER = 15

# What each layer of vlmd may import from vlmd (itself always, and `AGENT_API`). Read top to
# bottom: a layer may use the ones listed for it, never one that lists it.
LAYERS: dict[str, set[str]] = {
    "vlmd.config": set(),
    "vlmd.tokens": set(),
    "vlmd.store": set(),
    "vlmd.projections": {"vlmd.store"},
    "vlmd.live": {"vlmd.store", "vlmd.projections"},
    "vlmd.launch": {"vlmd.config", "vlmd.tokens", "vlmd.store", "vlmd.projections"},
    "vlmd.web": {"vlmd.config", "vlmd.tokens", "vlmd.store", "vlmd.projections", "vlmd.live",
                 "vlmd.launch"},
    "vlmd.daemon": {"vlmd.config", "vlmd.tokens", "vlmd.store", "vlmd.projections", "vlmd.live",
                    "vlmd.launch", "vlmd.web"},
    "vlmd.cli": {"vlmd.config", "vlmd.tokens", "vlmd.store", "vlmd.projections", "vlmd.live",
                 "vlmd.launch", "vlmd.daemon"},
}
# what vlmd may import of the agent: the wire schema and its catalog; the dataset readers
# (standard library only: the daemon serves items' images and checks a dataset before a run);
# the demo dataset's builder (`vlmd demo`); the preflight checks (stdlib and httpx: the daemon
# checks a model before a run).
AGENT_API = ("vlmd_agent.wire", "vlmd_agent.catalog", "vlmd_agent.evaluate.datasets",
             "vlmd_agent.evaluate.demo_data", "vlmd_agent.evaluate.preflight")
# the agent: watching and evaluating meet only in the pipe protocol, the wire and the outbox
AGENT_LAYERS: dict[str, set[str]] = {
    "vlmd_agent.catalog": set(),
    "vlmd_agent.wire": {"vlmd_agent.catalog"},
    "vlmd_agent.pipe": {"vlmd_agent.wire", "vlmd_agent.scoring", "vlmd_agent.outbox"},
    "vlmd_agent.outbox": {"vlmd_agent.wire"},
    "vlmd_agent.evaluate": {"vlmd_agent.wire", "vlmd_agent.catalog", "vlmd_agent.pipe",
                            "vlmd_agent.outbox", "vlmd_agent.scoring",
                            "vlmd_agent.breaker"},
    "vlmd_agent.watch": {"vlmd_agent.wire", "vlmd_agent.catalog", "vlmd_agent.pipe",
                         "vlmd_agent.outbox", "vlmd_agent.scoring", "vlmd_agent.breaker"},
    "vlmd_agent.scoring": set(),
}


def modules() -> dict[str, Path]:
    """Every module of both packages by dotted name (a package by its own name)."""
    found = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([name, *parts])] = path
    return found


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of ours that `module` imports anywhere (functions and TYPE_CHECKING
    blocks included), each resolved to the most specific module that exists."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names]
            names = [n if n in known else base for n in names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: set(imports(m, p, known)) for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str, layers: dict[str, set[str]]) -> str | None:
    return next((layer for layer in sorted(layers, key=len, reverse=True)
                 if module == layer or module.startswith(layer + ".")), None)


def test_no_import_cycles_type_only_imports_included() -> None:
    edges = graph()
    # a package's __init__ re-exporting its modules is not a cycle with them
    for m in edges:
        if (PACKAGES["vlmd"] / "__init__.py").exists() and m == "vlmd":
            edges[m] = set()
    assert cycles(edges) == []


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, targets in graph().items():
        if module in ("vlmd", "vlmd.__main__", "vlmd_agent", "vlmd_agent.__main__"):
            continue
        if module.startswith("vlmd_agent."):
            layers, mine = AGENT_LAYERS, layer_of(module, AGENT_LAYERS)
            if mine is None:  # the agent's entry points (cli) may use every agent layer
                continue
        else:
            layers, mine = LAYERS, layer_of(module, LAYERS)
            assert mine is not None, f"{module} is in no layer: add it to LAYERS"
        for target in targets:
            if target.startswith("vlmd_agent") and module.startswith("vlmd."):
                if target not in AGENT_API:
                    wrong.append(f"{module} -> {target} (vlmd may use only AGENT_API)")
                continue
            if target.startswith("vlmd.") and module.startswith("vlmd_agent"):
                wrong.append(f"{module} -> {target} (the agent never imports vlmd)")
                continue
            theirs = layer_of(target, layers)
            if theirs is None or theirs == mine:
                continue
            if theirs not in layers[mine]:
                wrong.append(f"{module} -> {target} ({mine} may not use {theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_folder_holds_more_than_fifteen_modules() -> None:
    crowded = {}
    for folder in [*PACKAGES.values(), *(p for f in PACKAGES.values() for p in f.rglob("*")
                                         if p.is_dir() and p.name != "__pycache__")]:
        n = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        if n > MAX_MODULES_PER_FOLDER:
            crowded[str(folder.relative_to(ROOT))] = n
    assert not crowded, crowded


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
