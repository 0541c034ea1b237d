"""Output directories are checked before a long job, not when it ends (one line, exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamfuse.cli import main
from streamfuse.usage import UsageError, check_output_dir


def test_check_output_dir_accepts_writable_places_and_leaves_nothing_behind(tmp_path: Path) -> None:
    check_output_dir(tmp_path, "--out")  # exists
    check_output_dir(tmp_path / "a" / "b" / "c", "--out")  # can be made
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(UsageError, match=r"^--report .*: cannot write there: Not a directory"):
            check_output_dir(bad, "--report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(("argv", "flag"), [
    (["train", "--recordings", "{data}", "--out", "{bad}"], "--out"),
    (["eval", "--model", "{data}", "--recordings", "{data}", "--report", "{bad}"], "--report"),
    (["dataset", "avdigits", "--out", "{bad}", "--segments", "10"], "--out"),
    (["demo", "--cache", "{bad}"], "--cache"),
    (["keys", "generate", "{bad}"], "DIR"),
])
def test_commands_refuse_an_unwritable_output_before_working(argv: list[str], flag: str, tmp_path: Path,
                                                             capsys) -> None:
    (tmp_path / "file").write_text("x")
    subs = {"{data}": str(tmp_path / "no-recordings"), "{bad}": str(tmp_path / "file" / "out")}
    assert main([subs.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"streamfuse {argv[0]}: {flag} ") and "cannot write there" in err[-1]
