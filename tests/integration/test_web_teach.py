"""The console's Teach page against a real daemon: label by holding a button, train, shadow.

The browser test holds the page's button for 3 s in Debian's Chromium (Playwright) while a
plain ZeroMQ subscriber watches ``room1/label``: the stream must carry exactly that span
(an open-ended label on press, a stop on release) and the page's timeline must show it.
Another trains on a small avdigits set from the page (text only, what ``room1`` captures),
waits for the report's figures, starts it as the shadow and promotes it, while a plain
subscriber checks that the classifications then name the new model.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
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
from tests.integration.web_fixtures import SOURCE, ConsoleDaemon, console_fixture  # noqa: F401 (a fixture)

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
    names = _recordings_for_training(bus_env, tmp_path)
    for modalities in (["smell"], [], "text"):
        body = {"recordings": names, "epochs": 1, "modalities": modalities}
        code, data = _api(console, "POST", "/api/train", body)
        assert code == 400 and "modalities" in data["error"], (modalities, data)
    assert _api(console, "GET", "/api/models")[1]["captured"] == ["text"]
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


def _recordings_for_training(bus_env, tmp_path: Path) -> list[str]:
    """A small avdigits set (its labels as label streams inside) copied into record.path."""
    data_dir = tmp_path / "avd"
    avdigits.build(data_dir, avdigits.Params(segments=40, seed=5, split="test"))
    rec_dir = Path(bus_env.cfg.record.path)
    rec_dir.mkdir(parents=True, exist_ok=True)
    for f in (data_dir / "test").glob("*.mcap"):
        shutil.copy(f, rec_dir / f.name)
    return sorted(f.name for f in rec_dir.glob("*.mcap"))


@needs_browser
def test_train_shadow_and_promote_from_the_page(
    console: ConsoleDaemon, bus_env, tmp_path: Path
) -> None:
    """Issue #19: train on the page (text only: room1 captures text), read the report with
    its figures, start it as the shadow, promote it: the classifications then name it."""
    names = _recordings_for_training(bus_env, tmp_path)
    assert console.watcher is not None
    watcher = console.watcher
    old_id = wait_for(
        lambda: (r := watcher.latest()) and r[1]["model"],
        timeout=30,
        what="a classification of the tiny live model",
    )
    browser = Browser()
    try:
        page = browser.page
        page.goto(console.url + "/teach")
        for name in names:
            page.check(f"#recs input[value='{name}']")
        # The modalities default to what the configured sources capture: room1, text only.
        page.wait_for_function(
            "!document.querySelector('#modalities input[value=video]').checked", timeout=10000
        )
        assert page.is_checked("#modalities input[value=text]")
        assert not page.is_checked("#modalities input[value=audio]")
        page.fill("#epochs", "1")
        page.click("#train")
        page.wait_for_function(
            "document.getElementById('accuracy').textContent !== '' && "
            "[...document.querySelectorAll('#plots img')].length === 2 && "
            "[...document.querySelectorAll('#plots img')].every(i => i.complete && i.naturalWidth)",
            timeout=300_000,
            polling=500,
        )
        job = _api(console, "GET", "/api/train")[1]
        new_id = job["report"]["model_id"]
        assert job["state"] == "done" and new_id != old_id
        assert "validation accuracy" in page.inner_text("#accuracy")
        assert new_id in page.inner_text("#accuracy")
        page.click("#as-shadow")
        page.wait_for_function(
            f"document.getElementById('models').textContent.includes('shadow {new_id}')",
            timeout=10000,
        )
        assert _api(console, "GET", "/api/models")[1]["shadow"] == new_id
        page.click("#promote")
        page.wait_for_function(
            f"document.getElementById('models').textContent.includes('live {new_id}')",
            timeout=10000,
        )
        promoted = time.monotonic()
        models = _api(console, "GET", "/api/models")[1]
        assert (models["live"], models["previous"], models["shadow"]) == (new_id, old_id, None)
        assert page.inner_text("#model-status") == "promote: done"

        # The workers load it between two batches: from its first answer on, only it answers.
        def rows() -> list[tuple[float, dict]]:
            with watcher.lock:
                return list(watcher.rows)

        first = wait_for(
            lambda: next((i for i, (_, c) in enumerate(rows()) if c["model"] == new_id), None),
            timeout=15,
            what="a classification by the promoted model",
        )
        wait_for(lambda: rows()[-1][0] > promoted + 1, timeout=15,
                 what="classifications more than 1 s after the promotion")
        seen = rows()
        assert seen[-1][0] > promoted + 1, "classifications still flow after the promotion"
        assert {c["model"] for _, c in seen[first:]} == {new_id}
        assert {c["model"] for _, c in seen[:first]} == {old_id}
        assert [e for e in browser.errors if "favicon" not in e] == []
    finally:
        browser.close()
