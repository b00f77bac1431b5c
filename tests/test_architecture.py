"""The import rules of docs/architecture.md: every module of a2v_het/ and data_tools/ imports only the packages its
row of the table allows (top-level and lazy imports alike), so the package graph has no cycles and nothing imports
upward. There are no exceptions: an import the table does not allow is moved, not listed.

Imports sit at the top of each module; one inside a function carries a `# lazy: <reason>` comment
(test_function_level_imports_say_why_they_are_lazy)."""

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"a2v_het", "a2v_het.atomic", "a2v_het.config"}

# unit -> the units it may import (besides itself). A unit is a subpackage (a2v_het.frontend), a top-level module
# (a2v_het.runs) or the data_tools package. Keep in step with docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "a2v_het": set(),
    "a2v_het.atomic": set(),
    "a2v_het.config": {"a2v_het.atomic"},
    "a2v_het.runs": CORE,
    "a2v_het.data": CORE,
    "data_tools": CORE | {"a2v_het.data"},
    "a2v_het.frontend": CORE | {"a2v_het.data"},
    "a2v_het.model": CORE | {"a2v_het.runs", "a2v_het.data", "a2v_het.frontend"},
    "a2v_het.recipe": CORE | {"a2v_het.data", "a2v_het.frontend", "a2v_het.model"},
    "a2v_het.eval": CORE | {"a2v_het.runs", "a2v_het.data", "a2v_het.frontend", "a2v_het.model", "a2v_het.recipe"},
    "a2v_het.train": CORE | {"a2v_het.runs", "a2v_het.data", "a2v_het.frontend", "a2v_het.model", "a2v_het.recipe",
                             "a2v_het.eval"},
    "a2v_het.bench": CORE | {"a2v_het.runs", "a2v_het.data", "a2v_het.frontend", "a2v_het.model", "a2v_het.recipe",
                             "a2v_het.eval", "a2v_het.train", "data_tools"},
    "a2v_het.cli": CORE | {"a2v_het.runs", "a2v_het.data", "a2v_het.frontend", "a2v_het.model", "a2v_het.recipe",
                           "a2v_het.eval", "a2v_het.train", "a2v_het.bench", "data_tools"},
}

def _modules():
    for top in ("a2v_het", "data_tools"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "data_tools":
        return "data_tools"
    if parts[0] != "a2v_het":
        return None
    return "a2v_het" if len(parts) == 1 else f"a2v_het.{parts[1]}"


def _is_submodule(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(module: str, path: Path):
    """(line, imported module) for every import of a2v_het / data_tools in the file, at any depth."""
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if _is_submodule(sub) else target


def _graph():
    edges = []
    for module, path in _modules():
        src = _unit(module)
        for line, target in _imports(module, path):
            dst = _unit(target)
            if dst is not None and dst != src:
                edges.append((module, path, line, src, target, dst))
    return edges


def test_every_unit_has_a_row():
    units = {_unit(m) for m, _ in _modules()}
    assert units <= ALLOWED.keys(), f"add a row to ALLOWED and docs/architecture.md for {units - ALLOWED.keys()}"


def test_the_allowed_graph_has_no_cycles():
    state: dict[str, int] = {}

    def visit(u, trail):
        if state.get(u) == 1:
            pytest.fail(f"cycle in ALLOWED: {' -> '.join(trail + [u])}")
        if state.get(u) == 2:
            return
        state[u] = 1
        for v in ALLOWED[u]:
            visit(v, trail + [u])
        state[u] = 2

    for u in ALLOWED:
        visit(u, [])


def test_no_upward_imports():
    bad = [f"{path.relative_to(ROOT)}:{line}: {module} imports {target} ({src} may not import {dst})"
           for module, path, line, src, target, dst in _graph()
           if dst not in ALLOWED.get(src, set())]
    assert not bad, "upward imports (see docs/architecture.md):\n" + "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk finds lazy and relative imports too (an import inside a function is still a dependency)."""
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from a2v_het.train.loop import pretrain\n    from .. import model\n")
    found = [t for _, t in _imports("a2v_het.eval.m", probe)]
    assert "a2v_het.train.loop" in found and "a2v_het.model" in found


def _comments(source: str) -> dict[int, str]:
    """line -> its comment text (without '#'), from the tokenizer, so a '#' inside a string is no comment."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#")
    return out


def _unexplained_function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, statement) of every import inside a function (at any depth: methods, nested functions, branches)
    with no comment saying "lazy" on one of its own lines or on the line above it."""
    source = path.read_text()
    lines = source.splitlines()
    comments = _comments(source)
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                span = range(child.lineno - 1, (child.end_lineno or child.lineno) + 1)
                if not any("lazy" in comments.get(line, "").lower() for line in span):
                    found.append((child.lineno, " ".join(lines[child.lineno - 1].split())))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source, str(path)), False)
    return found


def test_function_level_imports_say_why_they_are_lazy():
    """Imports sit at the top of each module, so the file's head is its dependency list. One inside a function is
    kept only for a reason (a heavy optional package: deepspeed, wandb, matplotlib, submitit; a slow import only
    one subcommand needs; a real import cycle), written next to it: `# lazy: <reason>` on its line or the line
    above."""
    bad = [f"{path.relative_to(ROOT)}:{line}: {statement}"
           for _, path in _modules() for line, statement in _unexplained_function_imports(path)]
    assert not bad, ("imports inside functions without a `# lazy: <reason>` comment (move them to the top of the "
                     "module, or say why they must wait):\n" + "\n".join(bad))


def test_the_lazy_import_checker(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text(
        "import os\n"
        "if os.name:\n"
        "    import json\n"
        "def f():\n"
        "    import csv\n"
        "    import wandb  # lazy: slow\n"
        "    # lazy: matplotlib is heavy\n"
        "    import matplotlib\n"
        "    s = '# lazy'; import math\n"
        "    def g():\n"
        "        from a2v_het import (\n"
        "            config,\n"
        "        )\n"
        "class C:\n"
        "    def m(self):\n"
        "        if True:\n"
        "            from pathlib import Path\n"
    )
    assert [line for line, _ in _unexplained_function_imports(probe)] == [5, 9, 11, 17]
