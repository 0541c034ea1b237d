"""Shared fixtures: a config under tmp_path, a real broker process, leak checks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from streamfuse import config as sfconfig
from tests.helpers.proc import ipc_ready, stop, streamfuse, wait_for

# The training tests run torch in this process: the same OpenMP policy as `streamfuse train`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _children(pid: int) -> set[int]:
    kids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.add(int(entry))
    return kids


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves child processes or non-daemon threads behind."""
    before_kids = _children(os.getpid())
    before_threads = {t.ident for t in threading.enumerate()}
    yield
    leaked = _children(os.getpid()) - before_kids
    threads = [t for t in threading.enumerate()
               if t.ident not in before_threads and t.is_alive() and not t.daemon]
    try:
        wait_for(lambda: not (_children(os.getpid()) - before_kids), timeout=3, what="children to exit")
    except TimeoutError:
        pytest.fail(f"test leaked child processes: {sorted(leaked)}")
    if threads:
        for t in threads:
            t.join(2)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            pytest.fail(f"test leaked threads: {alive}")


class BusEnv:
    """A config written under a temporary directory, with ipc endpoints there."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.run_dir = root / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = root / "streamfuse.toml"
        self.text = (
            f'[bus]\ninput = "ipc://{self.run_dir}/in"\noutput = "ipc://{self.run_dir}/out"\n'
            f'[align]\noutput = "ipc://{self.run_dir}/windows"\n'
            f'[metrics]\nlisten = ""\n'
            f'[web]\nlisten = ""\n'
            f'[fusion]\nmodel = "{root}/model"\n'
            f'[record]\npath = "{root}/recordings"\n'
        )
        self.write(extra)

    def write(self, extra: str = "") -> None:
        self.path.write_text(_merge_toml(self.text, extra))
        try:
            self.cfg = sfconfig.load(self.path, environ={})
        except sfconfig.ConfigError:
            pass  # a test of a refused config writes one on purpose; self.cfg stays the last good


def _merge_toml(base: str, extra: str) -> str:
    """Append ``extra``; a section in both keeps base keys unless ``extra`` sets them."""
    if not extra:
        return base
    import tomllib

    data = tomllib.loads(base)
    more = tomllib.loads(extra)
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k].update(v)
        else:
            data[k] = v
    return _dump(data)


def _dump(data: dict, prefix: str = "") -> str:
    import json

    lines: list[str] = []
    tables: list[tuple[str, dict]] = []
    arrays: list[tuple[str, list]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            arrays.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}{k}"
        out += f"[{name}]\n" + _dump(v, prefix=f"{name}.")
    for k, items in arrays:
        name = f"{prefix}{k}"
        for item in items:
            out += f"[[{name}]]\n" + _dump(item, prefix=f"{name}.")
    return out


@pytest.fixture
def bus_env(tmp_path: Path) -> BusEnv:
    return BusEnv(tmp_path)


@pytest.fixture
def broker(bus_env: BusEnv):
    """A real ``streamfuse broker`` process on ipc endpoints under tmp_path."""
    proc = streamfuse(["broker", "--config", str(bus_env.path)])
    try:
        wait_for(lambda: ipc_ready(bus_env.cfg.bus.input) and ipc_ready(bus_env.cfg.bus.output),
                 timeout=15, what="broker sockets")
        yield bus_env
    finally:
        assert stop(proc) == 0
