"""The layering of tidings/ (README "Layout"), read from the code's imports: every import runs down
the floors or within one, a type-only or function-level import included, and no module imports
itself back through others. An import that climbs must be named below, with why."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tidings"

# Top floor first; a room imports only from its own floor or floors below.
FLOORS: list[set[str]] = [
    {"tidings", "tidings.cli"},
    {"tidings.workers"},
    {"tidings.migrate"},
    {"tidings.startup", "tidings.serving", "tidings.server", "tidings.launch"},
    {"tidings.app"},
    {"tidings.admin", "tidings.playground"},
    {"tidings.transports"},
    {"tidings.engine"},
    {"tidings.metrics"},
    {"tidings.realtime"},
    {"tidings.resolvers"},
    {"tidings.schema"},
    {"tidings.store"},
    {"tidings.hooks", "tidings.limits", "tidings.declaration"},
    {
        "tidings.model",
        "tidings.auth",
        "tidings.filters",
        "tidings.pubsub",
        "tidings.tracing",
        "tidings.logs",
        "tidings.redaction",
        "tidings.config",
        "tidings.events",
    },
    {"tidings.protocols", "tidings.errors", "tidings.types"},
]

# (importing module, imported module): the imports allowed to climb, each with its reason.
CLIMBS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of tidings/ and the tidings modules it imports (anywhere in it)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    found: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from package import module`` imports that module; ``from module import name``, the module.
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            found[name].update(t for t in targets if t in modules and t != name)
    return found


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def floor_of(module: str) -> int:
    r = room(module)
    for i, rooms in enumerate(FLOORS):
        if r in rooms:
            return i
    raise AssertionError(f"{module}: its room {r} is on no floor of tests/test_layers.py (add it where it belongs)")


def test_every_import_runs_down_the_floors_or_is_a_named_climb() -> None:
    climbs = {
        (a, b)
        for a, targets in imports().items()
        for b in targets
        if room(a) != room(b) and floor_of(b) < floor_of(a) and room(a) != "tidings"
    }
    unnamed = sorted(climbs - set(CLIMBS))
    assert unnamed == [], f"imports that climb the floors (move the code, or name the climb in CLIMBS): {unnamed}"
    stale = sorted(set(CLIMBS) - climbs)
    assert stale == [], f"CLIMBS names imports that no longer exist: {stale}"


def test_no_module_imports_itself_back() -> None:
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == [], f"import cycles: {cycles}"
