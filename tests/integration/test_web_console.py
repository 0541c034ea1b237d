"""The web console against a real daemon: in Debian's Chromium (Playwright) and raw WebSockets.

Browser tests are skipped only where /usr/bin/chromium is absent (``apt-get install
chromium``; scripts/setup.sh installs it). ``STREAMFUSE_CONSOLE_PNG=FILE`` makes the live
page test save its screenshot there (docs/console.png is made that way).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streamfuse import clock
from tests.helpers.proc import run_streamfuse, stop, streamfuse, wait_for
from tests.integration.web_fixtures import SOURCE, ConsoleDaemon, console_fixture, free_port  # noqa: F401 (a fixture)

CHROMIUM = Path("/usr/bin/chromium")
needs_browser = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)


class Browser:
    """One Chromium page that records console errors and page errors."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"]
        )
        self.errors: list[str] = []
        self.page = self.new_page()

    def new_page(self):  # noqa: ANN201 - a playwright Page
        page = self.browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        return page

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


@pytest.fixture
def browser():
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def _page_class(page) -> tuple[int, str]:
    el = page.locator(f"[data-source={SOURCE}] .label")
    return int(float(el.get_attribute("data-t-end-ns") or 0)), el.inner_text()


def _label_of(console: ConsoleDaemon, t_end_ns: int) -> str:
    """The label a ZeroMQ subscriber received for the window ending at ``t_end_ns`` (the page
    has it as a JavaScript number: exact to well under a millisecond, windows are 500 ms apart)."""
    assert console.watcher is not None
    near = {
        t: label for t, label in console.watcher.by_end().items() if abs(t - t_end_ns) < 1_000_000
    }
    assert len(near) == 1, (
        f"no classification ends at {t_end_ns}: {sorted(console.watcher.by_end())[-5:]}"
    )
    return next(iter(near.values()))


@pytest.mark.slow
@needs_browser
def test_live_page_follows_the_bus(console: ConsoleDaemon, browser: Browser) -> None:
    page = browser.page
    page.goto(console.url + "/")
    frame = page.locator(f"[data-source={SOURCE}] .frame")
    page.wait_for_function(
        f"document.querySelector('[data-source={SOURCE}] .frame')?.naturalWidth > 0", timeout=20_000
    )
    seq0, shot0 = frame.get_attribute("data-seq"), frame.screenshot()
    page.wait_for_function(
        f"document.querySelector('[data-source={SOURCE}] .frame').dataset.seq != '{seq0}'",
        timeout=5_000,
    )
    # the new frame's image decoded (decode() rejects when a newer frame replaces it: retry)
    frame.evaluate("async img => { for (;;) { try { return await img.decode(); } catch {} } }")
    # ... and painted: a screenshot right after decode() once still showed the old pixels
    # (a fresh-clone CI run), so look again for up to 5 s
    deadline = time.monotonic() + 5
    while frame.screenshot() == shot0:
        assert time.monotonic() < deadline, "the frame's pixels did not change"
        page.wait_for_timeout(100)

    # The page shows the classification a plain ZeroMQ subscriber got, within 1 s of it.
    watcher = console.watcher
    assert watcher is not None
    checked = 0
    while checked < 3:
        wait_for(lambda: watcher.latest(), timeout=10, what="a classification on the bus")
        arrived, c = watcher.latest()  # type: ignore[misc]
        left_ms = max(1.0, (arrived + 1.0 - time.monotonic()) * 1000)
        page.wait_for_function(
            f"Number(document.querySelector('[data-source={SOURCE}] .label').dataset.tEndNs || 0)"
            f" >= {c['t_end_ns']} - 1e6",
            timeout=left_ms,
        )
        t_end, label = _page_class(page)
        assert label == _label_of(console, t_end)
        checked += 1
        wait_for(
            lambda c=c: watcher.latest()[1]["t_end_ns"] > c["t_end_ns"],
            timeout=5,  # type: ignore[index]
            what="the next classification",
        )

    timeline = page.locator(f"[data-source={SOURCE}] .timeline")
    n0 = int(timeline.get_attribute("data-entries") or 0)
    assert n0 >= 3
    page.wait_for_function(
        f"document.querySelector('[data-source={SOURCE}] .timeline').dataset.entries > {n0}",
        timeout=5_000,
    )
    assert (
        page.locator(f"[data-source={SOURCE}] .scores .score").count() == 3
    )  # the tiny model's classes
    assert page.locator(f"[data-source={SOURCE}] .db").inner_text().endswith("16000 Hz")
    if os.environ.get("STREAMFUSE_CONSOLE_PNG"):
        page.screenshot(path=os.environ["STREAMFUSE_CONSOLE_PNG"], full_page=True)
    assert browser.errors == []


@pytest.mark.slow
@needs_browser
def test_health_page_shows_a_capture_restart(console: ConsoleDaemon, browser: Browser) -> None:
    page = browser.page
    page.goto(console.url + "/health")
    name = f"capture-{SOURCE}-text"
    rows = "[...document.querySelectorAll('#children tbody tr')]"
    row = f"{rows}.find(r => r.cells[0].textContent === '{name}')"
    page.wait_for_function(f"{row}?.cells[1].textContent === 'running'", timeout=10_000)
    pid = int(page.evaluate(f"{row}.cells[2].textContent"))
    assert pid == console.children()[name]["pid"]
    os.kill(pid, signal.SIGKILL)
    page.wait_for_function(
        f"{row}.cells[1].textContent === 'running' && {row}.cells[3].textContent === '1'"
        f" && {row}.cells[2].textContent !== '{pid}'",
        timeout=5_000,
    )
    assert page.evaluate(f"{row}.cells[4].textContent") == "killed by SIGKILL"
    assert page.locator("#streams tbody tr").count() >= 2  # room1/audio, room1/video, ...
    # The worker's timings, read from its seconds histograms and shown in ms.
    worker = "[...document.querySelectorAll('#worker tbody tr')]"
    for name in ("inference ms", "latency_ms.total"):
        page.wait_for_function(
            f"{worker}.some(r => r.cells[0].textContent === '{name}'"
            " && +r.cells[1].textContent > 0 && r.cells[3].textContent !== '\u2013')",
            timeout=10_000,
        )
    assert browser.errors == []


def test_non_loopback_console_without_token_refuses_to_start(bus_env) -> None:
    from tests.conftest import _merge_toml

    listen = f"0.0.0.0:{free_port()}"
    bus_env.path.write_text(_merge_toml(bus_env.text, f'[web]\nlisten = "{listen}"\n'))
    r = run_streamfuse(["run", "--config", str(bus_env.path)], timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"streamfuse run: web.token: required when web.listen ({listen}) is not a loopback address"
    )


@pytest.mark.slow
@needs_browser
def test_token_is_required_and_a_link_with_it_logs_in(bus_env, browser: Browser) -> None:
    port, token = free_port(), "correct-horse-battery"
    bus_env.write(f'[web]\nlisten = "127.0.0.1:{port}"\ntoken = "{token}"\n')
    proc = streamfuse(["web", "--config", str(bus_env.path)])
    url = f"http://127.0.0.1:{port}"
    try:

        def status(path: str, headers: dict[str, str] | None = None) -> int | None:
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(url + path, headers=headers or {}), timeout=2
                ) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return None

        wait_for(lambda: status("/") is not None, timeout=20, what="the console to listen")
        assert status("/") == 401
        assert status("/api/health") == 401
        assert status("/", {"Authorization": "Bearer wrong"}) == 401
        assert status("/api/health", {"Authorization": f"Bearer {token}"}) == 200
        assert browser.page.goto(url + "/").status == 401
        page = browser.new_page()
        page.goto(f"{url}/?token={token}")
        assert page.url == url + "/"  # the token left the address bar for a cookie
        page.wait_for_function(
            "document.getElementById('conn').textContent === 'live'", timeout=10_000
        )
        page.goto(url + "/health")
        page.wait_for_function(
            "document.getElementById('conn').className === 'conn ok'", timeout=10_000
        )
        assert [e for e in browser.errors if "401" not in e] == []  # the first page's refusal only
    finally:
        assert stop(proc) == 0


@pytest.mark.slow
def test_a_slow_websocket_client_costs_the_pipeline_nothing(bus_env) -> None:
    import websockets

    metrics_port = free_port()
    d = ConsoleDaemon(bus_env, metrics_port=metrics_port)
    try:
        watcher = d.watcher
        assert watcher is not None
        wait_for(lambda: len(watcher.rows) >= 2, timeout=20, what="classifications")
        hop = bus_env.cfg.align.hop_ms * 1_000_000

        def answered(t0: int, t1: int) -> int:
            return len({t for t in watcher.by_end() if t0 <= t < t1})

        async def slow_client(seconds: float) -> tuple[int, int]:
            async with websockets.connect(d.url.replace("http", "ws") + "/ws"):
                start = clock.now_ns()
                await asyncio.sleep(seconds)  # reads nothing, acknowledges nothing
                return start, clock.now_ns()

        before0 = clock.now_ns()
        wait_for(lambda: max(watcher.by_end()) > before0 + 10 * 1_000_000_000 + hop, timeout=30,
                 what="the windows of the 10 s before the client")
        before = answered(before0, before0 + 10 * 1_000_000_000)
        t0, t1 = asyncio.run(slow_client(10))
        wait_for(
            lambda: max(watcher.by_end()) > t1 + hop, timeout=10, what="windows after the client"
        )
        during = answered(t0, t0 + 10 * 1_000_000_000)
        assert before == during == 10 * 1_000_000_000 // hop
        dropped = _metric(metrics_port, "streamfuse_web_dropped_total", 'kind="frame"')
        assert dropped >= 10
    finally:
        assert d.close() == 0


def _metric(port: int, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and labels in line
    )


@pytest.mark.slow
@needs_browser
def test_the_page_drops_evicted_panels_and_says_how_many_sources_are_not_shown(
    bus_env, browser: Browser
) -> None:
    """The console in-process (no broker: messages go straight into its state, at times the
    test chooses): the page follows evictions (``gone``) and shows the hidden count, and the
    configured camera that went silent first keeps its panel and frame."""
    import threading

    import numpy as np

    from streamfuse.web.server import Console, _server
    from streamfuse.web.state import MAX_PANELS
    from streamfuse.wire import codec

    port = free_port()
    bus_env.write(
        f'[web]\nlisten = "127.0.0.1:{port}"\n'
        f'[[sources]]\nname = "{SOURCE}"\n[sources.text]\ninput = "zmq"\n'
    )
    console = Console(bus_env.cfg)
    server = _server(console.app(), bus_env.cfg)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    st, t0, s = console.state, clock.now_ns(), 1_000_000_000
    try:
        img = np.full((120, 160, 3), 80, np.uint8)
        st.push(codec.frame_message(SOURCE, 0, t0, img), 0)  # then silent: a dead camera
        for i in range(MAX_PANELS - 1):
            st.push(codec.text_message(f"s{i}", 0, t0, "hi"), i * 1_000_000)
        page = browser.page
        wait_for(lambda: server.started, timeout=20, what="the console to listen")
        page.goto(f"http://127.0.0.1:{port}/")
        panels = "document.querySelectorAll('section.source')"
        page.wait_for_function(f"{panels}.length === {MAX_PANELS}", timeout=10_000)
        # A minute later: two new sources take the panels of the two silent the longest.
        for name in ("new0", "new1"):
            st.push(codec.text_message(name, 0, t0, "hello"), 61 * s)
        page.wait_for_function(
            "!document.querySelector('[data-source=s0]') && !document.querySelector("
            "'[data-source=s1]') && document.querySelector('[data-source=new1]')",
            timeout=10_000,
        )
        # Every other kept source speaks again; three more new ones find no room.
        for name in st.sources():
            if name != SOURCE:
                st.push(codec.text_message(name, 1, t0, "again"), 62 * s)
        for name in ("x0", "x1", "x2"):
            st.push(codec.text_message(name, 0, t0, "no room"), 62 * s)
        hidden = page.locator("#hidden")
        page.wait_for_function("!document.getElementById('hidden').hidden", timeout=10_000)
        assert hidden.inner_text().startswith("3 more sources not shown")
        assert page.evaluate(f"{panels}.length") == MAX_PANELS
        assert page.locator("[data-source=x0]").count() == 0
        assert page.evaluate(
            f"document.querySelector('[data-source={SOURCE}] .frame').naturalWidth"
        ) > 0
        assert browser.errors == []
    finally:
        server.should_exit = True
        thread.join(10)
