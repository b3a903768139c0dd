"""The house rules, read from the code's imports (``ast``, nothing is imported).

Each room may touch only what its rule allows, so a newcomer can trust a room's imports to say
what it depends on: the pipeline knows nothing of the service, the API no pipeline stage, the
worker side no HTTP, the kit only the contract, storage no HTTP bodies, and the research code
(evaluation, scene renderer) stays out of the service.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("recon_service", "pipelines", "fixtures")
PIPELINE_STAGES = ("pipelines.ingest", "pipelines.sfm", "pipelines.dense", "pipelines.mesh", "pipelines.texture", "pipelines.export", "pipelines.run")
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module."""
    target: str
    """The imported module, or ``module.name`` for ``from module import name``."""
    line: int
    top_level: bool
    """At module level (not inside a function), i.e. run when the module is imported."""


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


MODULES = _modules()


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports_of(module: str) -> Iterator[Import]:
    tree = ast.parse(MODULES[module].read_text())

    def visit(node: ast.AST, top_level: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue  # only for type checkers: never imported at run time
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, top_level)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    yield Import(module, f"{child.module}.{alias.name}", child.lineno, top_level)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, False)
            else:
                yield from visit(child, top_level)

    yield from visit(tree, True)


def _resolve(target: str) -> str | None:
    """The project module an import names (``from a.b import c``: ``a.b.c`` if a module, else ``a.b``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


ALL_IMPORTS = [imp for module in MODULES for imp in _imports_of(module)]


def _within(module: str, *rooms: str) -> bool:
    return any(module == room or module.startswith(room + ".") for room in rooms)


def _violations(source_rooms: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in ALL_IMPORTS
        if _within(imp.module, *source_rooms) and _within(imp.target, *forbidden)
    ]


def test_the_pipeline_imports_nothing_of_the_service() -> None:
    assert _violations(("pipelines",), ("recon_service", "fastapi", "starlette", "uvicorn", "httpx")) == []


def test_the_api_imports_no_pipeline_stage() -> None:
    assert _violations(("recon_service.api",), PIPELINE_STAGES) == []


def test_the_worker_side_imports_no_http_validation() -> None:
    assert _violations(("recon_service.jobs",), ("recon_service.api", "fastapi", "starlette")) == []
    worker_side = tuple(m for m in MODULES if _within(m, "recon_service.jobs") and m != "recon_service.jobs.submission")
    assert _violations(worker_side, ("recon_service.jobs.submission",)) == []


def test_the_kit_depends_on_the_contract_only() -> None:
    others = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in ALL_IMPORTS
        if _within(imp.module, "recon_service.kit")
        and _within(imp.target, "recon_service", "pipelines", "fixtures", "fastapi", "starlette", "uvicorn")
        and not _within(imp.target, "recon_service.kit", "recon_service.contract")
        and imp.target != "recon_service.__version__"
    ]
    assert others == []


def test_the_storage_room_knows_nothing_of_http_or_jobs() -> None:
    assert _violations(("recon_service.storage",), ("recon_service.api", "recon_service.jobs", "recon_service.kit", "fastapi", "starlette")) == []


def test_storage_never_builds_http_bodies() -> None:
    storage = ("recon_service.jobs.store", "recon_service.jobs.records", "recon_service.jobs.migrations")
    reached = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for imp in ALL_IMPORTS
        if imp.module in storage and _within(imp.target, "recon_service", "fastapi", "pydantic")
        and not _within(imp.target, *storage) and imp.target != "recon_service.contract.ContractStatus"
    ]
    assert reached == []


def test_no_module_imports_form_a_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        target = _resolve(imp.target)
        if imp.top_level and target is not None and target != imp.module and not target.startswith(imp.module + "."):
            graph[imp.module].add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [])
    assert cycles == []


@pytest.mark.parametrize("entry", ["recon_service.api.app", "recon_service.api.server", "recon_service.jobs.runner", "recon_service.kit.pytest_plugin"])
def test_research_code_stays_out_of_the_service(entry: str) -> None:
    """Everything the service can import (function-level imports included) holds no evaluation and no renderer."""
    seen, todo = set(), [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imp in _imports_of(module):
            target = _resolve(imp.target)
            if target is not None:
                todo.append(target)
    assert sorted(m for m in seen if _within(m, "pipelines.evaluate", "fixtures", "recon_service.cli")) == []


def test_long_modules_say_why_in_their_docstring() -> None:
    long = []
    for module, path in MODULES.items():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES and "long because" not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            long.append(f"{module} ({lines} lines)")
    assert long == []
