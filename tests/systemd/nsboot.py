"""A real systemd (PID 1 in throwaway namespaces) with streamfuse installed as README says.

:class:`SystemdNS` boots ``boot.sh`` beside this file: systemd 252 as PID 1 of new
pid/mount/uts/ipc/net namespaces, its root an overlay of ``/`` whose writes go to a
tmpfs (nothing reaches the host). Before systemd starts, a preparation script runs in
the new root and installs the service the way README's "Install as a service" does:
``scripts/install-service.sh`` builds the service's environment from the system
interpreter (``/usr/bin/python3``), creates the ``streamfuse`` user, installs config and
units. Only the dependencies (torch and friends, gigabytes) are not installed again:
the test suite's own site-packages is bind-mounted read-only at ``/opt/sf-deps`` and
named in a ``.pth`` file of the service's environment (``--no-deps``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Iterable
from pathlib import Path

from tests.helpers.proc import wait_for

ROOT = Path(__file__).resolve().parents[2]
BOOT = Path(__file__).with_name("boot.sh")
DEPS = "/opt/sf-deps"
STAGE = "/stage"


def unavailable() -> str | None:
    """Why a real systemd cannot be booted here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (namespaces, overlayfs, a system user)"
    for tool in ("unshare", "nsenter", "runuser", "useradd"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not Path("/lib/systemd/systemd").exists():
        return "needs systemd (apt-get install systemd)"
    if not Path("/usr/bin/python3").exists():
        return "needs the system interpreter /usr/bin/python3"
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--net", "--mount-proc", "true"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return f"cannot create namespaces here: {r.stderr.strip()}"
    return None


def copy_source(dst: Path) -> Path:
    """The project's files as a clone has them (no venv, caches or git objects)."""
    skip = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache",
                                  ".mypy_cache", ".ruff_cache", "node_modules", "*.egg-info",
                                  "build", ".hypothesis", ".gl", ".whl")
    shutil.copytree(ROOT, dst, ignore=skip)
    return dst


PREPARE_HEAD = f"""set -euo pipefail
# The service's environment, from the system interpreter; its dependencies come from the
# bind-mounted site-packages of the test suite (see tests/systemd/nsboot.py).
/usr/bin/python3 -m venv --without-pip /opt/streamfuse/venv  # pip and setuptools: from the dependencies
echo {DEPS} > "$(/opt/streamfuse/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/sf-deps.pth"
cp -r {STAGE}/src /root/streamfuse-src
cd /root/streamfuse-src
"""


class SystemdNS:
    """One booted systemd; ``run`` executes a command inside its namespaces."""

    def __init__(self, scratch: Path, *, units: Iterable[str], enable: Iterable[str] = (),
                 prepare: str = "", target: str = "basic.target") -> None:
        self.scratch = scratch
        stage = scratch / "stage"
        stage.mkdir(parents=True, exist_ok=True)
        copy_source(stage / "src")
        self.stage = stage
        script = scratch / "prepare.sh"
        script.write_text(PREPARE_HEAD + prepare)
        binds = f"{stage}:{STAGE} {sysconfig.get_path('purelib')}:{DEPS}"
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "SCRATCH": str(scratch / "ns"), "UNITS": " ".join(str(ROOT / "systemd" / u) for u in units),
               "ENABLE": " ".join(enable), "BINDS": binds, "PREPARE": str(script), "TARGET": target}
        self.log = open(scratch / "boot.log", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--mount-proc", str(BOOT)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._systemd_pid()
        # systemctl answers once PID 1 listens on its private socket ("offline" until then)
        self.wait(lambda: self.run("systemctl", "is-system-running").stdout.strip()
                  in ("starting", "running", "degraded"), 60, "systemd to answer systemctl")

    def _systemd_pid(self, timeout: float = 180) -> int:
        """systemd's pid on the host: the child of ``unshare`` once it has exec'd systemd
        (the preparation script, which installs the service, runs before that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"boot.sh exited {self.proc.returncode}: {self.boot_log()}")
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            for pid in kids.read_text().split() if kids.exists() else []:
                try:
                    exe = os.readlink(f"/proc/{pid}/exe")
                except OSError:
                    continue
                if exe.endswith("/systemd"):
                    return int(pid)
            time.sleep(0.1)
        raise TimeoutError(f"systemd did not start within {timeout} s: {self.boot_log()}")

    def boot_log(self) -> str:
        self.log.flush()
        return (self.scratch / "boot.log").read_text()[-4000:]

    def run(self, *cmd: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-a", *cmd], capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def show(self, unit: str, *props: str) -> dict[str, str]:
        r = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def journal(self, unit: str, *args: str) -> str:
        return self.run("journalctl", "-u", unit, "--no-pager", "-o", "cat", *args).stdout

    def wait(self, predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
        """Poll ``predicate`` (every 0.2 s: each poll is an nsenter) until it is truthy."""
        return wait_for(predicate, timeout=timeout, interval=0.2, what=what)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)  # PID 1 inside: everything in there ends
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
