"""Start-to-READY and stop times of the daemon, under a real systemd and without it.

Both legs run the same config (a looping video-file source and a text source, the test
suite's tiny model, CPU) on this machine:

- **without systemd**: ``streamfuse run`` as a child with a notify socket of its own; from
  the start of the process to ``READY=1``, and from SIGTERM to its exit.
- **under systemd**: systemd 252 as PID 1 in throwaway namespaces, the service installed as
  README says (``tests/systemd/nsboot.py``); ``systemctl start`` / ``stop``, timed by
  systemd's own timestamps (``InactiveExitTimestampMonotonic`` to
  ``ActiveEnterTimestampMonotonic``, ``ActiveExitTimestampMonotonic`` to
  ``InactiveEnterTimestampMonotonic``).

Run as root: ``.venv/bin/python bench/systemd_times.py --cycles 5``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.systemd.nsboot import SystemdNS, unavailable  # noqa: E402
from tests.systemd.test_service import CONFIG, INSTALL, stage_media  # noqa: E402

UNIT = "streamfuse.service"


def host_cycle(cfg: Path, sock_path: Path) -> tuple[float, float]:
    """One start and stop of ``streamfuse run`` without systemd: (to READY, stop) in seconds."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "run", "--config", str(cfg)],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        ready = None
        while ready is None and time.monotonic() - t0 < 120:
            try:
                if b"READY=1" in sock.recv(4096):
                    ready = time.monotonic() - t0
            except TimeoutError:
                continue
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        return ready if ready is not None else float("nan"), time.monotonic() - t1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
        sock_path.unlink()


def host_config(work: Path) -> Path:
    """The same files the namespace installs, at paths under ``work``."""
    stage_media(work, CONFIG)
    media = work / "media"
    text = CONFIG.replace("/opt/streamfuse/media/room1.avi", str(media / "room1.avi"))
    run = work / "run"
    run.mkdir()
    text = (f'[bus]\ninput = "ipc://{run}/in"\noutput = "ipc://{run}/out"\n'
            + text.replace("[align]\n", f'[align]\noutput = "ipc://{run}/windows"\n')
            .replace("[fusion]\n", f'[fusion]\nmodel = "{media / "model"}"\n'))
    cfg = work / "streamfuse.toml"
    cfg.write_text(text + '[metrics]\nlisten = ""\n')
    return cfg


def usec(ns: SystemdNS, prop: str) -> int:
    return int(ns.show(UNIT, prop)[prop])


def systemd_cycle(ns: SystemdNS) -> tuple[float, float]:
    """One ``systemctl start`` and ``stop``: (to READY, stop) in seconds, by systemd's clocks."""
    ns.run("systemctl", "start", UNIT, check=True, timeout=120)
    start = (usec(ns, "ActiveEnterTimestampMonotonic")
             - usec(ns, "InactiveExitTimestampMonotonic")) / 1e6
    ns.run("systemctl", "stop", UNIT, check=True, timeout=60)
    stop = (usec(ns, "InactiveEnterTimestampMonotonic")
            - usec(ns, "ActiveExitTimestampMonotonic")) / 1e6
    result = ns.show(UNIT, "Result")["Result"]
    if result != "success":
        raise RuntimeError(f"stop ended with Result={result}: {ns.journal(UNIT)[-2000:]}")
    return start, stop


def summary(name: str, rows: list[tuple[float, float]]) -> None:
    ready = [r[0] for r in rows]
    stop = [r[1] for r in rows]
    print(f"{name:18s} to READY median {statistics.median(ready):5.2f} s "
          f"(min {min(ready):.2f}, max {max(ready):.2f}); stop median {statistics.median(stop):5.2f} s "
          f"(min {min(stop):.2f}, max {max(stop):.2f}); {len(rows)} cycles")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=5, help="start/stop cycles per leg (default 5)")
    args = ap.parse_args()
    why = unavailable()
    if why:
        print(f"systemd_times: {why}", file=sys.stderr)
        return 2
    print(f"load average before: {os.getloadavg()}")
    host: list[tuple[float, float]] = []
    under: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        cfg = host_config(Path(a))
        stage_media(Path(b) / "stage", CONFIG)
        ns = SystemdNS(Path(b), units=[UNIT], prepare=INSTALL)
        try:
            # enabled, as README installs it: systemd keeps an enabled unit's timestamps after
            # a stop, where it forgets an unreferenced inactive one
            ns.run("systemctl", "enable", UNIT, check=True)
            for _ in range(args.cycles):  # alternated, so both legs see the same load
                host.append(host_cycle(cfg, Path(a) / "notify.sock"))
                under.append(systemd_cycle(ns))
        finally:
            ns.close()
    summary("without systemd", host)
    summary("under systemd", under)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
