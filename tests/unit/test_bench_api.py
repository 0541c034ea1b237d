"""The benchmarks run only by hand, so nothing else notices when the package drops or renames
what one of them uses (``clock.sleep_s`` went, three benchmarks kept calling it): every name a
script under ``bench/`` takes from ``streamfuse`` must exist."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _uses(tree: ast.AST) -> list[tuple[str, str]]:
    """(streamfuse module, name) for every ``from streamfuse.M import name`` and every
    ``alias.name`` where ``alias`` is a streamfuse module imported by the script."""
    aliases: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "streamfuse":
            for a in node.names:
                try:
                    importlib.import_module(f"{node.module}.{a.name}")
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"  # a module
                except ImportError:
                    out.append((node.module, a.name))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "streamfuse" and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases:
            out.append((aliases[node.value.id], node.attr))
    return out


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_streamfuse_name_a_benchmark_uses_exists(script: Path) -> None:
    missing = sorted({f"{m}.{name}" for m, name in _uses(ast.parse(script.read_text()))
                      if not hasattr(importlib.import_module(m), name)})
    assert missing == [], f"{script.name} uses names the package no longer has"
