"""parallel/'s modules import each other one way only (no cycles, not even through imports
placed inside functions): the engine interface, its two implementations and the checkpoint
code can each be read and changed on their own."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "parallel"


def local_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("parallel."):
            out.add(node.module.split(".")[1])
    return out


def test_no_import_cycles_in_parallel():
    graph = {p.stem: local_imports(p) & {q.stem for q in PACKAGE.glob("*.py")} for p in PACKAGE.glob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "ds_engine" not in graph["engine_base"] and "pipe_engine" not in graph["engine_base"]
