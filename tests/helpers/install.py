"""A capture-only install of this source tree (``pip install .``, no extras) in a fresh venv.

Built once per pytest run under the session's base temporary directory, so the install test
and the README recipe test share it. pip's cache makes it quick (about 10 s on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for commands of the fresh venv: no PYTHONPATH, so nothing of this
    checkout or of the test venv can stand in for what the install lacks."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items()
           if k not in dropped and not k.startswith("STREAMFUSE_")}
    env.update(extra)
    return env


def _source_copy(dest: Path) -> Path:
    """What a clone holds for the package build: pip builds in the tree it is given, so it
    gets a copy and leaves ``build/`` and ``*.egg-info`` out of the checkout."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "streamfuse", dest / "streamfuse",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def capture_only_venv(base: Path) -> Path:
    """``base/capture-venv`` with streamfuse installed without extras; returns its ``bin/``."""
    venv = base / "capture-venv"
    done = venv / ".installed"
    if done.exists():
        return venv / "bin"
    shutil.rmtree(venv, ignore_errors=True)
    src = base / "capture-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    env = clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    r = subprocess.run([*pip, str(_source_copy(src))], env=env, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"pip install . failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    done.touch()
    return venv / "bin"
