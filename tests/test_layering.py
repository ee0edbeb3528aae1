"""The architecture as a test: parse every import in src/reidkit (ast, so imports inside functions, under
TYPE_CHECKING and relative imports all count) and check the layering rules of docs/architecture.md.

Nodes are the top-level packages (data, models, ...) and the top-level modules (errors, registry, config,
utils, distance, checkpoint); `reidkit/__init__.py` is the node "reidkit" (the lazy public facade).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import reidkit

PACKAGE = "reidkit"
SRC = Path(reidkit.__file__).resolve().parent
ARCHITECTURE_DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
CLI_LIBRARIES = frozenset({"argparse", "typer", "click"})
TOP_LEVEL = frozenset(p.stem for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file())

# The architecture's statement: what each node may import (besides itself). Lower layers first; an edge not
# listed here is a violation. Keep in step with docs/architecture.md.
FOUNDATION = frozenset({"errors", "utils"})
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "utils": frozenset({"errors"}),
    "registry": FOUNDATION,
    "config": FOUNDATION,
    "distance": FOUNDATION,
    "data": FOUNDATION | {"registry", "config"},
    "models": FOUNDATION | {"registry", "config"},
    "checkpoint": FOUNDATION | {"models"},
    "miners": FOUNDATION | {"registry", "distance"},
    "losses": FOUNDATION | {"registry", "config", "distance", "miners"},
    "metrics": FOUNDATION | {"distance"},
    "inference": FOUNDATION | {"config", "checkpoint", "data", "models"},
    "rerank": FOUNDATION | {"registry", "distance", "checkpoint", "data", "metrics", "models", "inference"},
    "training": FOUNDATION | {"registry", "config", "distance", "checkpoint", "data", "models", "losses", "miners",
                              "metrics", "inference", "rerank"},
    "search": FOUNDATION | {"registry", "config", "distance", "checkpoint", "data", "models", "metrics",
                            "inference", "rerank"},
    "export": FOUNDATION | {"config", "checkpoint", "data", "models", "inference"},
    "classic": FOUNDATION | {"registry", "config", "distance", "data"},
    "analysis": FOUNDATION | {"registry", "config", "distance", "checkpoint", "data", "models", "metrics",
                              "inference", "rerank"},
    "video": FOUNDATION | {"registry", "config", "distance", "checkpoint", "data", "models", "metrics", "inference",
                           "rerank", "search", "analysis"},
    "web": FOUNDATION | {"registry", "config", "distance", "checkpoint", "data", "models", "metrics", "inference",
                         "rerank", "search", "analysis", "video"},
    "cli": FOUNDATION | {"registry", "config", "distance", "checkpoint", "data", "models", "losses", "miners",
                         "metrics", "inference", "rerank", "training", "search", "export", "analysis", "video",
                         "web", "classic", "reidkit"},
    "reidkit": FOUNDATION | {"data", "models", "metrics", "inference", "training", "analysis", "video"},
    "__main__": FOUNDATION | {"cli"},  # `python -m reidkit` / `torchrun -m reidkit`: the entry point, nothing else
}

# Named rules (also implied by ALLOWED; stated on their own so a failure says which promise broke).
FORBIDDEN: dict[str, tuple[frozenset[str], str]] = {
    "metrics": (frozenset({"training", "inference", "rerank", "search", "cli", "export"}),
                "metrics is a pure library: no training, inference, rerank, search, cli or export"),
    "miners": (frozenset({"losses", "models"}), "miners import reidkit.distance, never losses or models"),
    "data": (frozenset({"models", "training", "inference", "metrics", "search", "cli"}),
             "data sits below models, training, inference, metrics, search and cli"),
}


@dataclass(frozen=True)
class Import:
    """One import statement's target: `module` (dotted, e.g. reidkit.metrics.plots) imports `target` at `line`."""

    module: str
    line: int
    target: str

    @property
    def source_node(self) -> str:
        return node_of(self.module)

    @property
    def target_node(self) -> str | None:
        """The node imported, or None for a library outside reidkit."""
        return node_of(self.target) if is_internal(self.target) else None

    def where(self) -> str:
        return f"{self.module} (line {self.line}) imports {self.target}"


def is_internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def node_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def imports_of(source: str, module: str, is_package: bool) -> Iterator[Import]:
    """Every import in `source` (whole tree, not just the top level), relative ones made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if node.module is None or target == PACKAGE:  # `from . import x`: x may be a module of that package
                for alias in node.names:
                    yield Import(module, node.lineno, _from_package(target, alias.name))
            else:
                yield Import(module, node.lineno, target)


def _from_package(package: str, name: str) -> str:
    # From the root, only a real top-level module/package is a node; other names (__version__, Extractor)
    # are attributes of the facade.
    if package == PACKAGE and name not in TOP_LEVEL:
        return PACKAGE
    return f"{package}.{name}"


def collect_imports(root: Path = SRC) -> list[Import]:
    found = []
    for path in sorted(root.rglob("*.py")):
        found.extend(imports_of(path.read_text(encoding="utf-8"), module_name(path, root),
                                path.name == "__init__.py"))
    return found


# ------------------------------------------------------------------------------------------------ rules

def package_edges(records: Iterable[Import]) -> dict[tuple[str, str], list[Import]]:
    """(source node, target node) -> the imports that make that edge; self-edges dropped."""
    edges: dict[tuple[str, str], list[Import]] = {}
    for record in records:
        target = record.target_node
        if target is not None and target != record.source_node:
            edges.setdefault((record.source_node, target), []).append(record)
    return edges


def cycle_violations(records: Iterable[Import]) -> list[str]:
    """One message per package cycle, naming each edge of it by module and line."""
    edges = package_edges(records)
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    messages, reported = [], set()
    for start in sorted(graph):
        path = _path_back(graph, start)
        if path and frozenset(path) not in reported:
            reported.add(frozenset(path))
            hops = zip(path, path[1:] + path[:1])
            evidence = "; ".join(edges[hop][0].where() for hop in hops)
            messages.append(f"import cycle {' -> '.join(path + [path[0]])}: {evidence} "
                            "[rule: no import cycles between packages]")
    return messages


def _path_back(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A shortest path start -> ... -> (a node with an edge back to start), or None (breadth-first)."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return None


def rule_violations(records: Iterable[Import]) -> list[str]:
    """Every import that breaks a named rule or the ALLOWED table, as 'module (line n) imports x [rule: ...]'."""
    messages = []
    for record in records:
        source, target = record.source_node, record.target_node
        top = record.target.split(".")[0]
        if target is None:
            if top in CLI_LIBRARIES and source != "cli":
                messages.append(f"{record.where()} [rule: only reidkit.cli parses command lines ({top})]")
            continue
        if target == source:
            continue
        if target == "cli" and source != "__main__":
            messages.append(f"{record.where()} [rule: nothing outside reidkit.cli imports reidkit.cli]")
        if source in FORBIDDEN and target in FORBIDDEN[source][0]:
            messages.append(f"{record.where()} [rule: {FORBIDDEN[source][1]}]")
        if source not in ALLOWED:
            messages.append(f"{record.where()} [rule: {source} is not in the architecture table (ALLOWED); add it "
                            "there and to docs/architecture.md]")
        elif target not in ALLOWED[source]:
            messages.append(f"{record.where()} [rule: {source} may import only "
                            f"{', '.join(sorted(ALLOWED[source])) or 'nothing in reidkit'}]")
    return messages


# ------------------------------------------------------------------------------------------------ tests

@pytest.fixture(scope="module")
def real_imports() -> list[Import]:
    return collect_imports()


def test_no_import_cycles_between_packages(real_imports):
    problems = cycle_violations(real_imports)
    assert not problems, "\n".join(problems)


def test_every_import_follows_the_layering_rules(real_imports):
    problems = rule_violations(real_imports)
    assert not problems, "\n".join(problems)


def test_the_table_is_acyclic_and_names_every_node():
    # The statement itself must be a layering: a cycle in ALLOWED would let a real cycle through.
    table = [Import(f"{PACKAGE}.{source}", 0, f"{PACKAGE}.{target}")
             for source, targets in ALLOWED.items() for target in targets if source != PACKAGE]
    assert not cycle_violations(table)
    nodes = {node_of(module_name(path)) for path in SRC.rglob("*.py")}
    assert nodes - set(ALLOWED) == set(), f"nodes missing from ALLOWED: {sorted(nodes - set(ALLOWED))}"
    assert {"errors", "registry", "config", "utils", "distance", "checkpoint", "cli"} <= nodes


def documented_table(text: str) -> dict[str, frozenset[str]]:
    """The 'may import' column of docs/architecture.md's package table (besides itself, errors and utils)."""
    table = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names, allowed = re.findall(r"`(\w+)`", cells[0].split("(")[0]), cells[-1].split("(")[0]
        for node in names:
            if allowed.startswith("nothing"):
                table[node] = frozenset()
            elif allowed.startswith("everything"):
                table[node] = frozenset(ALLOWED) - {node, "__main__"}
            else:
                table[node] = (FOUNDATION | set(re.findall(r"`(\w+)`", allowed))) - {node}
    return table


def test_docs_state_the_same_table():
    assert documented_table(ARCHITECTURE_DOC.read_text(encoding="utf-8")) == ALLOWED


def test_the_parser_sees_relative_nested_and_from_package_imports():
    source = (
        "import argparse\n"
        "from ..errors import DataError\n"
        "from . import rank\n"
        "from .. import distance\n"
        "def f():\n"
        "    if True:\n"
        "        import reidkit.cli.main\n"
        "    from .. import __version__\n"
        "from reidkit import Extractor\n"
    )
    got = {(r.line, r.target) for r in imports_of(source, "reidkit.metrics.plots", is_package=False)}
    assert got == {(1, "argparse"), (2, "reidkit.errors"), (3, "reidkit.metrics.rank"), (4, "reidkit.distance"),
                   (7, "reidkit.cli.main"), (8, "reidkit"), (9, "reidkit")}
    in_init = {r.target for r in imports_of("from .rank import x\n", "reidkit.metrics", is_package=True)}
    assert in_init == {"reidkit.metrics.rank"}


def test_violations_are_reported_with_module_line_and_rule():
    # A synthetic graph that breaks each rule once: the checks must fail on it, naming the culprit.
    bad = [
        Import("reidkit.metrics.plots", 12, "reidkit.training.loop"),
        Import("reidkit.miners.base", 7, "reidkit.losses.base"),
        Import("reidkit.data.images", 3, "reidkit.models.registry"),
        Import("reidkit.search.index", 40, "argparse"),
        Import("reidkit.rerank.methods", 5, "reidkit.cli.options"),
        Import("reidkit.errors", 2, "reidkit.utils"),
        Import("reidkit.utils", 9, "reidkit.errors"),
    ]
    problems = rule_violations(bad)
    expected = [
        ("reidkit.metrics.plots (line 12) imports reidkit.training.loop", "metrics is a pure library"),
        ("reidkit.miners.base (line 7) imports reidkit.losses.base", "never losses or models"),
        ("reidkit.data.images (line 3) imports reidkit.models.registry", "data sits below models"),
        ("reidkit.search.index (line 40) imports argparse", "only reidkit.cli parses command lines"),
        ("reidkit.rerank.methods (line 5) imports reidkit.cli.options", "nothing outside reidkit.cli imports"),
        ("reidkit.errors (line 2) imports reidkit.utils", "errors may import only nothing in reidkit"),
    ]
    for where, rule in expected:
        assert any(where in p and rule in p for p in problems), (where, rule, problems)
    assert not any(p.startswith("reidkit.utils (line 9)") for p in problems)  # utils -> errors is allowed
    cycles = cycle_violations(bad)
    assert len(cycles) == 1 and "errors -> utils -> errors" in cycles[0]
    assert "reidkit.errors (line 2)" in cycles[0] and "reidkit.utils (line 9)" in cycles[0]


def test_an_unknown_package_must_be_added_to_the_table():
    problems = rule_violations([Import("reidkit.hologram.tracks", 4, "reidkit.models")])
    assert len(problems) == 1 and "hologram is not in the architecture table" in problems[0]
