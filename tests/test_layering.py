"""The shape of the tree, checked from the source: data flows one way, applications → agents → env → engine →
models, and nothing imports upwards (docs/architecture.md draws them).

Every ``import`` of a ``textenv`` module is read with :mod:`ast` (those inside functions too; those under
``if TYPE_CHECKING:`` are type hints, not imports, and are skipped). A module may import modules of its own layer
or below. Module-level imports form no cycle, the runtime never imports the build tools in ``tools/``, and no
function of the library is longer than :data:`MAX_FUNCTION_LINES`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder → the package name it installs as.
PACKAGES = {"textenv": "textenv", "agents": "textenv.agents", "reward_models": "textenv.reward_models"}

#: Layer of each module prefix, lowest first; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    # 0: foundations every layer may use
    "textenv.validation": 0, "textenv.config": 0, "textenv.checkpoint": 0, "textenv.logprobs": 0, "textenv.fast": 0,
    # 1: models (loading, LoRA, setup)
    "textenv.models": 1,
    # 2: the generation engine (private, under the env)
    "textenv.engine": 2,
    # 3: the Gymnasium surface and what it computes rewards with
    "textenv": 3, "textenv.reward_models": 3,
    # 4: agents
    "textenv.agents": 4,
    # 5: applications
    "textenv.apps": 5, "textenv.__main__": 5,
}
NAMES = {0: "foundations", 1: "models", 2: "engine", 3: "env", 4: "agents", 5: "applications"}


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    top, *rest = relative.parts
    parts = [PACKAGES[top], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(prefixes, key=len)]


def source_files() -> list[Path]:
    return sorted(file for folder in PACKAGES for file in (ROOT / folder).rglob("*.py"))


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` of every import in ``path`` outside TYPE_CHECKING blocks."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, child.lineno, top_level))
                # `from textenv.apps import cli` imports textenv.apps.cli
                found.extend((f"{child.module}.{alias.name}", child.lineno, top_level) for alias in child.names)
            inner = top_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


MODULES = {module_name(file): file for file in source_files()}


def internal(name: str) -> bool:
    return name in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_goes_up_a_layer(module: str) -> None:
    mine = layer(module)
    upward = [f"{MODULES[module].relative_to(ROOT)}:{line} imports {name} ({NAMES[layer(name)]})"
              for name, line, _ in imports(MODULES[module]) if internal(name) and layer(name) > mine]
    assert not upward, f"{module} is in the {NAMES[mine]} layer:\n" + "\n".join(upward)


def test_the_runtime_never_imports_the_build_tools() -> None:
    offenders = [f"{file.relative_to(ROOT)}:{line}" for file in source_files()
                 for name, line, _ in imports(file) if name == "tools" or name.startswith("tools.")]
    assert not offenders


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a list of nodes, first = last), or ``None``: depth-first search."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_module_level_imports_have_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for module, file in MODULES.items():
        # a submodule importing its own package (e.g. for a registry) is how Python packages work: only edges
        # to modules that are not one of this module's parent packages count
        graph[module] = {name for name, _, top in imports(file) if top and internal(name) and name != module
                         and not module.startswith(name + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_layer_table_covers_every_module() -> None:
    assert all(layer(module) in NAMES for module in MODULES)
    assert layer("textenv.apps.cli") == 5 and layer("textenv.agents.sb3.policy") == 4
    assert layer("textenv.engine.generation") == 2 and layer("textenv.vector_env") == 3


#: The longest a function of the library may be (docs/architecture.md: small functions with one job).
MAX_FUNCTION_LINES = 80


def test_no_library_function_is_longer_than_80_lines() -> None:
    long = []
    for file in source_files():
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into functions with one job each:\n" + "\n".join(long)
