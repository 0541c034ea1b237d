"""Dependencies point one way: commands -> service -> components -> base (wire, clock, config).

Read from the import statements of every module under ``streamfuse/`` (lazy imports inside
functions included), so a shortcut taken anywhere fails here, with the module that took it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "streamfuse"
BASE = {"wire", "clock", "config", "logs", "stats", "usage", "readiness", "metrics", "progress",
        "signals", "data", "node"}
COMPONENTS = {"capture", "align", "fusion", "record", "train", "datasets", "web", "bridge",
              "frameplane"}
COMMAND_LINE = {"cli", "commands", "__main__"}


def _part(module: str) -> str:
    """``streamfuse.align.window`` -> ``align``; ``streamfuse`` itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported streamfuse module) for every import in the package."""
    out = []
    for f in PACKAGE.rglob("*.py"):
        mod = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == "streamfuse":
                names = [node.module] if node.module != "streamfuse" else \
                    [f"streamfuse.{a.name}" for a in node.names]
                out += [(mod, n) for n in names]
            elif isinstance(node, ast.Import):
                out += [(mod, a.name) for a in node.names if a.name.split(".")[0] == "streamfuse"]
    return out


def _breaking(rule) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted({f"{a} imports {b}" for a, b in _imports()
                   if _part(a) != _part(b) and rule(_part(a), _part(b))})


def test_nothing_below_the_command_line_imports_it() -> None:
    assert _breaking(lambda a, b: b in COMMAND_LINE and a not in COMMAND_LINE) == []


def test_base_modules_import_no_component_or_service() -> None:
    assert _breaking(lambda a, b: a in BASE and b not in BASE | {""}) == []


def test_components_import_no_service() -> None:
    assert _breaking(lambda a, b: a in COMPONENTS and b in {"service"} | COMMAND_LINE) == []


def test_the_generic_trainer_knows_no_data_set() -> None:
    """Benchmark-specific views (avdigits' segments.csv) plug in from the command layer."""
    assert _breaking(lambda a, b: a == "train" and b == "datasets") == []


def _imported_modules(tree: ast.AST) -> set[str]:
    """Every module an import statement of ``tree`` names (top level and inside functions)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_only_the_command_line_knows_argparse() -> None:
    """Arguments become typed parameters in ``streamfuse/commands/``; nothing below sees them."""
    allowed = {"cli", "__main__", "commands"}
    offenders = sorted(
        str(f.relative_to(PACKAGE.parent)) for f in PACKAGE.rglob("*.py")
        if f.relative_to(PACKAGE).parts[0].removesuffix(".py") not in allowed
        and "argparse" in {m.split(".")[0]
                           for m in _imported_modules(ast.parse(f.read_text(encoding="utf-8")))})
    assert offenders == []


def test_the_argparse_rule_sees_lazy_imports() -> None:
    tree = ast.parse("def f():\n    import argparse.x\n\ndef g():\n    from argparse import A\n")
    assert _imported_modules(tree) == {"argparse.x", "argparse"}


def test_the_rules_see_the_imports() -> None:
    """The walk finds imports at all, lazy ones inside functions included."""
    found = set(_imports())
    assert ("streamfuse.service.supervisor", "streamfuse.wire.sockets") in found
    assert any(a == "streamfuse.commands.evaluate" and b.startswith("streamfuse.datasets")
               for a, b in found)
