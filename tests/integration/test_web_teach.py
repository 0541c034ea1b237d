"""The console's Teach page against a real daemon: label by holding a button, train, shadow.

The browser test holds the page's button for 3 s in Debian's Chromium (Playwright) while a
plain ZeroMQ subscriber watches ``room1/label``: the stream must carry exactly that span
(an open-ended label on press, a stop on release) and the page's timeline must show it.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import zmq

from streamfuse import clock
from streamfuse.datasets import avdigits
from streamfuse.train.labels import LabelStream
from streamfuse.wire import codec, topics
from streamfuse.wire.schema import LabelHeader
from streamfuse.wire.sockets import connect_sub
from tests.helpers.proc import wait_for
from tests.integration.test_web_console import Browser, needs_browser
from tests.integration.web_fixtures import SOURCE, ConsoleDaemon

pytestmark = pytest.mark.slow


class LabelWatcher:
    """Every ``room1/label`` message a plain subscriber receives (and whether video flows)."""

    def __init__(self, bus) -> None:
        self.labels: list[LabelHeader] = []
        self.video = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(bus,), daemon=True)
        self.thread.start()

    def _run(self, bus) -> None:
        with zmq.Context() as ctx:
            sub = connect_sub(ctx, bus, [topics.label_topic(SOURCE), topics.topic(SOURCE, "video")])
            try:
                while not self.stop.is_set():
                    if sub.poll(50):
                        h = codec.decode(sub.recv_multipart()).header
                        if isinstance(h, LabelHeader):
                            self.labels.append(h)
                        else:
                            self.video += 1
            finally:
                sub.close(linger=0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def console(bus_env):
    d = ConsoleDaemon(bus_env)
    try:
        yield d
    finally:
        assert d.close() == 0


def _api(
    console: ConsoleDaemon,
    method: str,
    path: str,
    body: dict | None = None,
    headers: dict | None = None,
) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        console.url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@needs_browser
def test_holding_the_button_3_s_labels_exactly_that_span(console: ConsoleDaemon, bus_env) -> None:
    watcher = LabelWatcher(bus_env.cfg.bus)
    browser = Browser()
    try:
        wait_for(lambda: watcher.video > 0, timeout=30, what="room1 on the bus")
        page = browser.page
        page.goto(console.url + "/teach")
        page.wait_for_function(
            f"[...document.querySelectorAll('#source option')].some(o => o.value === '{SOURCE}')",
            timeout=15000,
        )
        page.select_option("#source", SOURCE)
        page.fill("#label", "seven")
        page.hover("#hold")
        pressed_ns = clock.now_ns()
        page.mouse.down()
        page.wait_for_timeout(3000)
        page.mouse.up()
        wait_for(lambda: len(watcher.labels) >= 2, timeout=10, what="the label and its stop")
        page.wait_for_function(
            "(JSON.parse(document.getElementById('spans').dataset.spans || '[]'))"
            ".some(s => s.end_ns !== null)",
            timeout=10000,
        )
        shown = json.loads(page.get_attribute("#spans", "data-spans") or "[]")
        assert browser.errors == []
    finally:
        browser.close()
        watcher.close()
    start, end = watcher.labels
    assert (start.label, start.t_end_ns, start.stop) == ("seven", 0, False)
    assert (end.label, end.stop) == ("", True)
    assert 2.9e9 <= end.t_ns - start.t_ns <= 3.6e9, end.t_ns - start.t_ns
    assert abs(start.t_ns - pressed_ns) < 0.5e9, "the label starts when the button is pressed"
    stream = LabelStream()
    for h in watcher.labels:
        stream.push(h.source, h.t_ns, h.t_end_ns, h.label, stop=h.stop)
    spans = stream.finish({SOURCE: (0, end.t_ns + 10**9)})
    assert [(s.start_ns, s.end_ns, s.label) for s in spans] == [(start.t_ns, end.t_ns, "seven")]
    # The page holds times as JavaScript numbers: exact to well under a microsecond here.
    assert [s["label"] for s in shown] == ["seven"]
    assert (
        abs(shown[0]["start_ns"] - start.t_ns) < 1000 and abs(shown[0]["end_ns"] - end.t_ns) < 1000
    )


def test_teach_api_refuses_bad_input_and_trains_one_job_at_a_time(
    console: ConsoleDaemon, bus_env, tmp_path: Path
) -> None:
    for body, why in (
        ({"source": "ghost", "label": "x", "action": "start"}, "unknown source"),
        ({"source": SOURCE, "label": "", "action": "start"}, "empty"),
        ({"source": SOURCE, "label": "x" * 65, "action": "start"}, "at most 64"),
        ({"source": SOURCE, "action": "dance"}, "action"),
    ):
        code, data = _api(console, "POST", "/api/label", body)
        assert code == 400 and why in data["error"], (body, data)
    code, data = _api(
        console,
        "POST",
        "/api/label",
        {"source": SOURCE, "label": "x", "action": "start"},
        {"Origin": "http://evil.example"},
    )
    assert code == 403
    code, data = _api(console, "POST", "/api/models", {"action": "promote"})
    assert code == 400 and "no shadow model" in data["error"]
    code, data = _api(console, "POST", "/api/train", {"recordings": ["../etc.mcap"]})
    assert code == 400
    # A recording of a labelled source in record.path: train it, once at a time, then shadow it.
    data_dir = tmp_path / "avd"
    avdigits.build(data_dir, avdigits.Params(segments=40, seed=5, split="test"))
    rec_dir = Path(bus_env.cfg.record.path)
    rec_dir.mkdir(parents=True, exist_ok=True)
    for f in (data_dir / "test").glob("*.mcap"):
        shutil.copy(f, rec_dir / f.name)
    names = [f.name for f in rec_dir.glob("*.mcap")]
    code, job = _api(console, "POST", "/api/train", {"recordings": names, "epochs": 1})
    assert code == 200 and job["state"] == "running"
    assert _api(console, "POST", "/api/train", {"recordings": names, "epochs": 1})[0] == 409
    code, job = _api(console, "DELETE", "/api/train")
    assert job["state"] == "cancelled" and not Path(job["dir"]).exists()
    code, job = _api(console, "POST", "/api/train", {"recordings": names, "epochs": 1})
    assert code == 200
    done = wait_for(
        lambda: (j := _api(console, "GET", "/api/train")[1])["state"] != "running" and j,
        timeout=300,
        interval=0.5,
        what="the training job",
    )
    assert done["state"] == "done", done
    report = done["report"]
    assert report["classes"] and "val_accuracy" in report["metrics"]
    # The console's room1 captures text only; the new model also uses video and audio.
    code, refused = _api(console, "POST", "/api/models", {"action": "shadow", "dir": done["dir"]})
    assert code == 400 and "no configured source captures" in refused["error"]
    assert _api(console, "GET", "/api/models")[1]["shadow"] is None
