"""The demo's model cache is keyed on the trainer's code: a new recipe retrains."""

from __future__ import annotations

import shutil
from pathlib import Path

from streamfuse.service import demo

PKG = Path(demo.__file__).resolve().parents[1]


def _copy_tree(dst: Path) -> Path:
    for sub in ("train", "fusion", "service"):
        shutil.copytree(PKG / sub, dst / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_fingerprint_changes_with_the_trainer_and_model_code(tmp_path, monkeypatch) -> None:
    root = _copy_tree(tmp_path / "streamfuse")
    monkeypatch.setattr(demo, "__file__", str(root / "service" / "demo.py"))
    first = demo._trainer_fingerprint()
    assert first == demo._trainer_fingerprint()
    (root / "service" / "supervisor.py").write_text("# not the trainer\n")
    assert demo._trainer_fingerprint() == first
    for rel in ("train/loop.py", "fusion/model.py", "fusion/features.py"):
        f = root / rel
        before = f.read_bytes()
        f.write_bytes(before + b"\n# a new recipe\n")
        assert demo._trainer_fingerprint() != first, rel
        f.write_bytes(before)
    assert demo._trainer_fingerprint() == first
