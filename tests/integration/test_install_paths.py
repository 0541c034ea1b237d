"""The capture-only install (``pip install .`` without the ``fusion`` extra) in a fresh venv:
what an edge host runs works without torch, and the commands that need torch say so in one
line instead of a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.install import capture_only_venv, clean_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory) -> Path:
    return capture_only_venv(tmp_path_factory.getbasetemp())


def _run(venv_bin: Path, args: list[str], cwd: Path,
         timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv_bin / "streamfuse"), *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_install_holds_no_torch_and_no_demo_packages(venv_bin: Path, tmp_path: Path) -> None:
    probe = ("import importlib.util as u, streamfuse; "
             "print(streamfuse.__file__); "
             "print(*[m for m in ('torch', 'torchaudio', 'sklearn', 'scipy', 'pytest') "
             "if u.find_spec(m)])")
    r = subprocess.run([str(venv_bin / "python"), "-c", probe], cwd=tmp_path, env=clean_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    where, present = r.stdout.splitlines()
    # installed, not editable: the package lives in the venv, not in the source tree
    assert where.startswith(str(venv_bin.parent)), where
    assert present == "", f"a capture-only install holds {present}"


def test_edge_commands_run_without_torch(venv_bin: Path, tmp_path: Path) -> None:
    for args in (["capture", "--help"], ["devices"], ["broker", "--help"], ["record", "--help"]):
        r = _run(venv_bin, args, tmp_path)
        assert r.returncode == 0, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert "capture" in _run(venv_bin, ["capture", "--help"], tmp_path).stdout


def test_commands_that_need_torch_name_the_fusion_extra(venv_bin: Path, bus_env,
                                                        tmp_path: Path) -> None:
    cfg = str(bus_env.path)
    for args in (["run", "--config", cfg], ["fuse", "--config", cfg],
                 ["train", "--recordings", str(tmp_path), "--out", str(tmp_path / "m")]):
        r = _run(venv_bin, args, tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert lines[0].startswith(f"streamfuse {args[0]}: needs torch"), lines[0]
        assert "'fusion' extra" in lines[0] and "pip install '.[fusion]'" in lines[0]
    assert not list(bus_env.run_dir.iterdir())  # `run` refused before it bound anything
