"""The package's layers: data flows one way (models -> checkpoints -> api -> ... -> cli) and no module imports one
that (directly or not) imports it back, counting imports inside functions too (they hide circles, not remove
them)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "convnext"

# Each top-level module or package of convnext and its layer: a module may import from lower layers and from
# its own package only. A new module must be placed here (the test names it).
LAYERS = {
    "models": 0, "data_config": 0, "malloc": 0, "distributed": 0, "plots": 0,
    "fast": 1, "checkpoints": 1,
    "api": 2,
    "data": 3,
    "flops": 4, "evaluate": 4, "predict": 4, "export": 4,
    "benchmark": 5, "train": 5, "robustness": 5,
    "roadmap": 6, "downstream": 6, "pretrain": 6,
    "cli": 9, "__init__": 10, "__main__": 11,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The convnext modules `path` imports (absolute names), wherever in the file the import stands."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("convnext"):
                if node.module:
                    found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)  # `from . import fast` names a module
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("convnext"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for t in _imports(path):
            while t and t not in modules:  # `convnext.models.Block` -> convnext.models
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                targets.add(t)
        graph[name] = targets
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_points_down_the_layers():
    graph = _graph()
    unknown = sorted({_top(m) for m in graph} - set(LAYERS))
    assert not unknown, f"place these in LAYERS: {unknown}"
    wrong = [f"{a} imports {b}" for a, targets in graph.items() for b in targets
             if _top(a) != _top(b) and LAYERS[_top(a)] <= LAYERS[_top(b)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = _graph()
    # Tarjan's strongly connected components: any with two or more modules is a circle
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    # a package's __init__ re-exports its modules, which import siblings: only circles across packages count
    circles = [c for c in circles if len({m.rsplit(".", 1)[0] if m.count(".") > 1 else m for m in c}) > 1
               and len({_top(m) for m in c}) > 1]
    assert not circles, circles
