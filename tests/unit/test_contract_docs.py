"""The public contract that ships with the project: the classification JSON Schema
(docs/schemas/ and the package hold the same file) and the repository's own docs."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest

from streamfuse.wire import schema

ROOT = Path(__file__).resolve().parents[2]
DOCS_SCHEMA = ROOT / "docs" / "schemas" / "classification.schema.json"
PACKAGE_SCHEMA = ROOT / "streamfuse" / schema.CLASSIFICATION_SCHEMA

EXAMPLE = {
    "source": "room1", "t_start_ns": 1_700_000_000_000_000_000,
    "t_end_ns": 1_700_000_001_000_000_000,
    "label": "seven", "scores": {"zero": 0.07, "seven": 0.93},
    "present": {"video": True, "audio": True, "text": False}, "model": "3f2a9c",
    "latency_ms": {"align": 12.0, "queue": 0.4, "infer": 3.1, "total": 15.5},
}


def test_the_package_ships_the_documented_schema() -> None:
    assert PACKAGE_SCHEMA.read_bytes() == DOCS_SCHEMA.read_bytes()
    loaded = schema.classification_json_schema()
    jsonschema.Draft202012Validator.check_schema(loaded)
    jsonschema.validate(EXAMPLE, loaded)


@pytest.mark.parametrize(("path", "value"), [
    (("label",), None),                       # removed
    (("scores",), ["seven"]),                 # not an object
    (("scores", "seven"), "0.93"),            # a string, not a number
    (("present", "audio"), None),             # a modality missing
    (("t_end_ns",), 1.5),                     # not an integer
    (("source",), "Room 1"),                  # not a source name
    (("latency_ms", "total"), None),
])
def test_the_schema_rejects_what_the_protocol_forbids(path: tuple[str, ...], value: object) -> None:
    bad = copy.deepcopy(EXAMPLE)
    target = bad
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema.classification_json_schema())


SKIP = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".mypy_cache",
        ".ruff_cache", ".hypothesis"}


def _project_files() -> list[Path]:
    """The repository's text files that users read: docs, code, config, examples, tests."""
    out = []
    for p in ROOT.rglob("*"):
        rel = p.relative_to(ROOT)
        generated = any(part.endswith(".egg-info") for part in rel.parts)  # pip's copy of README
        if SKIP.intersection(rel.parts) or generated or not p.is_file() or p == Path(__file__):
            continue
        if p.suffix in (".md", ".py", ".js", ".json", ".toml", ".sh", ".service", ".txt", ""):
            out.append(p)
    return out


def test_nothing_points_outside_the_repository() -> None:
    """Users never see the team's design notes: docs, code and examples cite docs/ instead."""
    outside = re.compile(r"DESIGN\.md|TESTING\.md|STYLE\.md|\.\./shared|/work/shared")
    citing = [str(p.relative_to(ROOT)) for p in _project_files()
              if outside.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert citing == []


def test_docs_cited_in_the_project_exist() -> None:
    cited: dict[str, str] = {}
    for p in _project_files():
        text = p.read_text(encoding="utf-8", errors="replace")
        for ref in re.findall(r"\bdocs/[a-z_/]+\.(?:md|json)", text):
            cited.setdefault(ref, str(p.relative_to(ROOT)))
    assert "docs/protocol.md" in cited and "docs/architecture.md" in cited
    assert {ref: f for ref, f in cited.items() if not (ROOT / ref).exists()} == {}
