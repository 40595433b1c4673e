"""The package's shape: imports point one way (no circle, imports inside functions included), and every module
imports on its own in a fresh interpreter (no module works only because another one was imported first)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "thinktuning"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports, at any depth of the file (functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("thinktuning")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("thinktuning"):
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m in MODULES}


def graph() -> dict[str, set[str]]:
    return {m: imports_of(p) - {m} for m, p in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_hand_made_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_package():
    assert cycles(graph()) == []


def test_the_method_steps_do_not_import_the_loop():
    """The step packages are used by the trainer, never the other way round."""
    edges = graph()
    for mod, deps in edges.items():
        steps = ("rollout", "guidance", "teacher", "rewards", "objective", "data", "models")
        if mod.count(".") and mod.split(".")[1] in steps:
            assert not {d for d in deps if d.startswith(("thinktuning.train", "thinktuning.eval",
                                                          "thinktuning.report", "thinktuning.cli"))}, mod


def test_every_module_imports_alone_in_a_fresh_interpreter():
    def load(mod: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, text=True, timeout=300)
        return mod, proc.returncode, proc.stderr[-800:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        failed = [r for r in pool.map(load, sorted(MODULES)) if r[1] != 0]
    assert not failed, failed


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_module_is_over_400_lines_without_saying_why(mod):
    text = MODULES[mod].read_text()
    if text.count("\n") > 420:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "lines" in doc and "because" in doc, f"{mod}: {text.count(chr(10))} lines and no reason at its top"
