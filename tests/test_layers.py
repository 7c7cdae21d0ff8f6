"""The package's imports run one way (issue 18): no cycle anywhere, and the labeling layers
import only downwards: schema <- masks <- postprocess <- sources/predictor <- labeler <- job."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "boxcaseg"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (annotations only, never imported)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _graph() -> dict[str, set[str]]:
    """Module -> the boxcaseg modules it imports, at module level or inside functions
    (a lazy import is still a dependency). Package ``__init__`` files that only re-export
    names lazily are left out: they are the public doors, not a layer."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if path.name == "__init__.py":
            continue
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and not modules[t].name == "__init__.py" and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_in_the_package():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


LAYERS = ["schema", "masks", "postprocess", "sources", "labeler", "job"]


@pytest.mark.parametrize("low", range(len(LAYERS)))
def test_labeling_layers_import_only_downwards(low):
    graph = _graph()
    lab = "boxcaseg.labeling."

    def layer(mod: str) -> int | None:
        rest = mod[len(lab):] if mod.startswith(lab) else None
        if rest is None:
            return None
        head = rest.split(".")[0]
        head = {"predictor": "sources", "fused": "sources", "refine": "sources", "sam": "sources",
                "score": "postprocess", "config": "schema", "review": "labeler"}.get(head, head)
        return LAYERS.index(head) if head in LAYERS else None

    for mod, deps in graph.items():
        if layer(mod) != low:
            continue
        for d in deps:
            assert layer(d) is None or layer(d) <= low, f"{mod} imports {d} (a higher layer)"
            assert d != lab + "calibrate", f"{mod} imports the offline calibrate tool"


def test_report_export_and_calibrate_read_labels_through_the_schema():
    graph = _graph()
    for mod, deps in graph.items():
        if mod.startswith(("boxcaseg.report", "boxcaseg.export")) or \
                mod == "boxcaseg.labeling.calibrate":
            assert not any(d.startswith("boxcaseg.labeling.job") or
                           d == "boxcaseg.labeling.labeler" for d in deps), mod
        if mod.startswith("boxcaseg.export"):
            assert not any(d.startswith("boxcaseg.report") for d in deps), mod
