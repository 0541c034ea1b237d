"""Every function in ``streamfuse/`` can be read in one sitting: at most 60 lines, its
docstring included (a long one is split into named steps)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "streamfuse"
MAX_LINES = 60


def test_no_function_is_longer_than_60_lines() -> None:
    long = []
    for f in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{f.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n})")
    assert long == []
