"""Make docs/console.png: the live page of a real daemon replaying the demo's test split.

    .venv/bin/python scripts/console_screenshot.py [--out docs/console.png] [--seconds 40] [--small]

The same path as the demo: its cached data and model (``streamfuse demo`` builds them; built
here when missing), ``streamfuse run`` with its web console, ``streamfuse replay`` at 1x in a
loop, re-stamped to now so the loops follow each other in time; the page is opened in
Debian's Chromium (Playwright) and captured after ``--seconds``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamfuse.config import load  # noqa: E402
from streamfuse.service import demo  # noqa: E402
from streamfuse.signals import Signals  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "console.png"))
    p.add_argument("--seconds", type=float, default=40.0, help="replay this long before the shot")
    p.add_argument("--small", action="store_true", help="the demo's reduced data set and model")
    args = p.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="streamfuse-shot-"))
    try:
        cfg_path = demo.write_config(run_dir, None)
        size = demo.SMALL if args.small else demo.FULL
        ddir, mdir = demo.prepare(demo.cache_dir(None), size, None, cfg_path)
        cfg_path = demo.write_config(run_dir, mdir, web=demo.web_listen(0))
        cfg = load(cfg_path, environ={})
        files = sorted(str(f) for f in (ddir / "test").glob("*.mcap"))
        daemon = demo.Daemon(cfg_path, run_dir)
        try:
            daemon.wait_ready(120, Signals())
            replay = subprocess.Popen([sys.executable, "-m", "streamfuse", "replay", *files,
                                       "--rate", "1", "--loop", "--restamp", "--config",
                                       str(cfg_path)],
                                      stderr=subprocess.DEVNULL)
            try:
                shoot(f"http://{cfg.web.listen}/", Path(args.out), args.seconds)
            finally:
                replay.terminate()
                replay.wait(10)
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"console_screenshot: wrote {args.out}")
    return 0


def shoot(url: str, out: Path, seconds: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url)
            time.sleep(seconds)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


if __name__ == "__main__":
    sys.exit(main())
