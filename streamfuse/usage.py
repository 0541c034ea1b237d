"""What the command layer and the code below it share: the usage error, the output-directory
check and the optional-extra hint.

Code below the command line raises :class:`UsageError` for bad input that a user gave (a
flag, a file, a label); the command layer turns it into one line and exit code 2. Nothing
here knows argparse.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


class UsageError(Exception):
    """Bad usage found after parsing (exit 2, one line)."""


# Top-level modules that only an optional extra of pyproject.toml installs: a command that
# needs one which is missing names the extra instead of failing with a traceback.
EXTRAS = {"torch": "fusion", "torchaudio": "fusion", "safetensors": "fusion",
          "matplotlib": "fusion", "sklearn": "demo", "scipy": "demo"}


def missing_extra(module: str) -> str | None:
    """``"needs torch, ..."``: how to get ``module`` when an extra brings it, else None."""
    top = module.partition(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (f"needs {top}, which this install lacks: install streamfuse with its {extra!r} "
            f"extra (pip install '.[{extra}]' in the source tree)")


def check_output_dir(path: str | Path, flag: str) -> None:
    """Raise :class:`UsageError` naming ``flag`` unless ``path`` is, or can be made, a directory
    this process can write in; checked before a long job rather than at its end. Leaves
    nothing behind: directories it creates to try are removed again."""
    p = Path(path)
    missing: list[Path] = []
    q = p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue  # made meanwhile by someone else: theirs to keep
            created.append(d)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write there: {e.strerror or e}") from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass  # someone else has started to use it
