"""The web console's parts without a daemon: config, state, frames, flow control, access, files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamfuse import config
from streamfuse.clock import NS_PER_MS as MS
from streamfuse.web import health, live
from streamfuse.web.frames import preview_jpeg
from streamfuse.web.recordings import Recordings
from streamfuse.web.state import TIMELINE_NS, ConsoleState
from streamfuse.wire import codec, topics

T0 = 1_700_000_000_000_000_000


def test_web_defaults_and_off() -> None:
    web = config.parse({}, environ={}).web
    assert (web.listen, web.token, web.max_fps) == ("127.0.0.1:8080", "", 5.0)
    assert config.parse({"web": {"listen": ""}}, environ={}).web.listen == ""


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "192.168.1.4:80", ":8080", "[::]:8080"])
def test_non_loopback_console_needs_a_token(listen: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse({"web": {"listen": listen}}, environ={})
    assert (
        str(e.value) == f"web.token: required when web.listen ({listen}) is not a loopback address"
    )
    assert config.parse({"web": {"listen": listen, "token": "t"}}, environ={}).web.token == "t"


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "localhost:1", "[::1]:8080"])
def test_loopback_console_needs_no_token(listen: str) -> None:
    assert config.parse({"web": {"listen": listen}}, environ={}).web.listen == listen


def test_web_table_entry_only_when_on() -> None:
    from streamfuse.service.processes import table

    on = [s.name for s in table(config.parse({}, environ={}))]
    off = [s.name for s in table(config.parse({"web": {"listen": ""}}, environ={}))]
    assert "web" in on and "web" not in off
    spec = next(s for s in table(config.parse({}, environ={})) if s.name == "web")
    assert not spec.essential and spec.argv[-1] == "web"


# ----------------------------------------------------------------------------- state


def _frame(seq: int, *, jpeg: bool = False, shape: tuple[int, int] = (120, 160)):
    img = np.full((*shape, 3), seq % 256, np.uint8)
    if jpeg:
        data = cv2.imencode(".jpg", img)[1].tobytes()
        return codec.frame_message(
            "cam", seq, T0 + seq * 100 * MS, data, shape=(*shape, 3), encoding="jpeg"
        )
    return codec.frame_message("cam", seq, T0 + seq * 100 * MS, img)


def _class(seq: int, label: str, t_end: int) -> codec.Message:
    payload = {
        "label": label,
        "scores": {"a": 0.1, "b": 0.2, label: 0.7},
        "present": {"video": True},
        "latency_ms": {"total": 3.0},
        "model": "m",
    }
    m = codec.class_message(
        "cam", seq, t_end - 1000 * MS, t_end, label, 0.7, json.dumps(payload).encode()
    )
    assert m.topic == topics.class_topic("cam")
    return m


def test_state_keeps_the_newest_frame_and_bounded_panels() -> None:
    st = ConsoleState()
    for i in range(3):
        st.push(codec.decode(codec.encode(_frame(i))))
    version, frame = st.frame("cam")
    assert version == 3 and frame is not None and frame.header.seq == 2
    block = (0.5 * np.sin(np.arange(320) / 3)).astype(np.float32).reshape(320, 1)
    for i in range(1000):  # 20 s of 20 ms blocks: only the last 5 s stay
        st.push(codec.audio_message("cam", i, T0 + i * 20 * MS, block, 16000))
    a = st.view("cam", "audio")
    assert len(a["wave"]) <= 200 and a["wave"][-1] == [
        pytest.approx(-0.5, abs=0.01),
        pytest.approx(0.5, abs=0.01),
    ]
    assert a["level_db"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.3)
    for i in range(20):
        st.push(codec.text_message("cam", i, T0 + i * MS, f"m{i}"))
    assert [m["text"] for m in st.view("cam", "text")] == [f"m{i}" for i in range(12, 20)]


def test_timeline_cursor_trims_and_restarts_on_rewind() -> None:
    st = ConsoleState()
    hop = 500 * MS
    for i in range(4):
        st.push(_class(i, "x" if i < 2 else "y", T0 + i * hop))
    first = st.timeline_since("cam", -1, -1)
    assert first["reset"] and [e[2] for e in first["add"]] == ["x", "x", "y", "y"]
    st.push(_class(4, "z", T0 + 4 * hop))
    more = st.timeline_since("cam", first["epoch"], first["next"])
    assert not more["reset"] and more["add"] == [[T0 + 2 * hop, T0 + 4 * hop, "z"]]
    current = st.view("cam", "class")["current"]
    assert (
        current["label"] == "z"
        and current["scores"][0] == ["z", 0.7]
        and len(current["scores"]) == 3
    )
    st.push(_class(5, "late", T0 + 4 * hop + TIMELINE_NS + hop))  # three minutes on: old ones go
    assert [e[2] for e in st.timeline_since("cam", -1, -1)["add"]] == ["late"]
    st.push(_class(6, "again", T0))  # a replay from the start
    again = st.timeline_since("cam", more["epoch"], more["next"])
    assert again["reset"] and [e[2] for e in again["add"]] == ["again"]


# ----------------------------------------------------------------------------- frames


@pytest.mark.parametrize("jpeg", [False, True])
def test_preview_is_a_downscaled_jpeg(jpeg: bool) -> None:
    m = _frame(7, jpeg=jpeg, shape=(480, 640))
    out = preview_jpeg(m.header, m.payload[0], max_width=320)
    assert out is not None
    data, w, h = out
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert (w, h) == (320, 240) and img.shape == (240, 320, 3)
    assert abs(int(img.mean()) - 7) <= 2


def test_small_jpeg_goes_out_unchanged() -> None:
    m = _frame(3, jpeg=True, shape=(60, 80))
    assert preview_jpeg(m.header, m.payload[0], max_width=320) == (bytes(m.payload[0]), 80, 60)


# ----------------------------------------------------------------------------- flow control


class SlowSocket:
    """Takes messages and never acknowledges them."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    async def send_text(self, data: str) -> None:
        self.sent.append(data)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


def test_a_browser_that_does_not_ack_gets_at_most_the_window_and_drops_are_counted() -> None:
    async def scenario() -> tuple[live.Hub, SlowSocket, live.Client]:
        st = ConsoleState()
        hub = live.Hub(st, max_fps=1000)
        sock = SlowSocket()
        client = live.Client(sock)
        hub.clients.add(client)
        pump = asyncio.create_task(client.pump(st, hub.sent))
        for i in range(30):
            st.push(_frame(i))
            st.push(codec.text_message("cam", i, T0 + i * MS, f"m{i}"))
            hub.mark()
            await hub.frames(now_ns=i * 10**9)
            await asyncio.sleep(0)
        pump.cancel()
        return hub, sock, client

    hub, sock, client = asyncio.run(scenario())
    assert len(sock.sent) == live.WINDOW and client.in_flight == live.WINDOW
    assert hub.dropped["frame"] >= 25 and hub.dropped["text"] >= 25
    update = json.loads(next(m for m in sock.sent if isinstance(m, str)))
    assert update["t"] == "update" and "cam" in update["sources"]
    frame = next(m for m in sock.sent if isinstance(m, bytes))
    n = int.from_bytes(frame[:2], "big")
    assert json.loads(frame[2 : 2 + n])["source"] == "cam" and frame[2 + n : 4 + n] == b"\xff\xd8"


def test_frames_go_out_at_max_fps_when_ticks_run_late() -> None:
    async def scenario() -> tuple[int, float]:
        st = ConsoleState()
        hub = live.Hub(st, max_fps=5)
        client = live.Client(SlowSocket())
        hub.clients.add(client)
        tick_ns = int(hub.tick_s * 1.05e9)  # each tick takes a little longer than its sleep
        sent, n = 0, int(10e9 // tick_ns)
        for tick in range(n):  # a camera faster than max_fps: a new frame at every tick
            st.push(_frame(tick))
            await hub.frames(now_ns=tick * tick_ns)
            sent += client.frames.pop("cam", None) is not None
        return sent, n * tick_ns / 1e9

    sent, seconds = asyncio.run(scenario())
    assert sent == pytest.approx(5 * seconds, abs=1)


# ----------------------------------------------------------------------------- access


def _client(token: str = "", host: str = "127.0.0.1:8080", recordings: str = "/nonexistent"):
    from starlette.testclient import TestClient

    from streamfuse.web.server import Console

    cfg = config.parse({"web": {"token": token}, "record": {"path": recordings}}, environ={})
    return TestClient(
        Console(cfg, health=health.HealthReader(None, None)).app(), base_url=f"http://{host}"
    )


def test_token_by_header_cookie_or_link() -> None:
    c = _client("s3cret")
    assert c.get("/api/recordings").status_code == 401
    assert c.get("/api/recordings", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/recordings", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = c.get("/health?token=s3cret", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/health"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert c.get("/api/recordings").status_code == 200  # the cookie now


def test_without_token_only_loopback_hosts_and_own_origin() -> None:
    from starlette.websockets import WebSocketDisconnect

    assert _client().get("/").status_code == 200
    assert _client(host="evil.example:8080").get("/").status_code == 403  # DNS rebinding
    with (
        pytest.raises(WebSocketDisconnect),
        _client().websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws,
    ):
        ws.receive_text()


def test_download_only_files_in_the_recordings_directory(tmp_path: Path) -> None:
    (tmp_path / "a.mcap").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    r = Recordings(tmp_path)
    assert r.path("a.mcap") == tmp_path / "a.mcap"
    for bad in ("../a.mcap", "notes.txt", ".a.mcap", "b.mcap", "sub/a.mcap"):
        assert r.path(bad) is None
    [row] = r.list()
    assert row["name"] == "a.mcap" and row["error"]  # not MCAP: listed, with why


def test_the_recordings_cache_forgets_removed_files(tmp_path: Path) -> None:
    """Rotation and retention remove files for months: the list's cache keeps only those
    still there."""
    r = Recordings(tmp_path)
    for i in range(50):
        (tmp_path / f"rec-{i:04d}.mcap").write_bytes(b"x")
        if i >= 2:
            (tmp_path / f"rec-{i - 2:04d}.mcap").unlink()
        assert len(r.list()) == min(i + 1, 2)
    assert sorted(r._cache) == ["rec-0048.mcap", "rec-0049.mcap"]


def test_recordings_list_from_the_reader(tmp_path: Path) -> None:
    from streamfuse.record.writer import RecordingWriter

    w = RecordingWriter(tmp_path / "rec.mcap")
    for i in range(11):
        w.write_message(
            codec.audio_message(
                "room1", i, T0 + i * 100 * MS, np.zeros((160, 1), np.float32), 16000
            )
        )
        w.write_message(codec.text_message("room1", i, T0 + i * 100 * MS, "hi"))
    w.close()
    [row] = Recordings(tmp_path).list()
    assert row["start_ns"] == T0 and row["duration_s"] == 1.0 and row["complete"]
    assert row["streams"] == ["room1/audio", "room1/text"] and row["size_bytes"] > 0
    with _client(recordings=str(tmp_path)) as c:
        listed = c.get("/api/recordings").json()
        assert [f["name"] for f in listed["files"]] == ["rec.mcap"]
        r = c.get("/recordings/rec.mcap")
        assert r.status_code == 200 and r.content == (tmp_path / "rec.mcap").read_bytes()
        assert "attachment" in r.headers["content-disposition"]
        assert c.get("/recordings/..%2Fsecret.mcap").status_code == 404


# ----------------------------------------------------------------------------- health numbers


def test_quantiles_from_buckets() -> None:
    s: health.Samples = {
        "h_bucket": [
            ({"le": "1.0"}, 0.0),
            ({"le": "2.0"}, 50.0),
            ({"le": "4.0"}, 100.0),
            ({"le": "+Inf"}, 100.0),
        ],
        "h_count": [({}, 100.0)],
        "h_sum": [({}, 250.0)],
    }
    q = health.quantiles(s, "h")
    assert q["count"] == 100 and q["mean"] == 2.5 and q["p50"] == 2.0 and q["p90"] == 3.6
    assert health.quantiles(s, "h", interpolate=False)["p90"] == 4.0


def test_worker_timings_come_from_the_histograms_the_worker_fills() -> None:
    """The page reads the metrics the fusion worker really exports (seconds) and shows ms:
    a renamed metric must not leave the page's timings silently empty."""
    from prometheus_client import CollectorRegistry, Histogram

    from streamfuse import metrics

    reg = CollectorRegistry()
    hists = {}
    for m in (metrics.inference_seconds, metrics.window_latency):
        hists[m] = Histogram(m._name, m._documentation, m._labelnames, registry=reg,
                             buckets=metrics.LATENCY_BUCKETS_S)
    for v in (0.004, 0.006, 0.008):
        hists[metrics.inference_seconds].observe(v)
        hists[metrics.window_latency].labels(part="total").observe(10 * v)
    s: health.Samples = {}
    for fam in reg.collect():
        for smp in fam.samples:
            s.setdefault(smp.name, []).append((dict(smp.labels), float(smp.value)))
    out = health.HealthReader(None, None)._metrics(s, T0)
    inf, total = out["inference_ms"], out["latency_ms"]["total"]
    assert inf["count"] == 3 and inf["mean"] == pytest.approx(6.0)
    assert 2.5 <= inf["p50"] <= 10.0
    assert total["count"] == 3 and total["mean"] == pytest.approx(60.0)
    assert out["latency_ms"]["align"]["count"] == 0


def test_each_page_is_the_shared_frame_around_its_body() -> None:
    c = _client()
    pages = {"/": ("live", "console.js", 'id="sources"'), "/health": ("health", "health.js", 'id="worker"'),
             "/recordings": ("recordings", "recordings.js", 'id="files"'),
             "/teach": ("teach", "teach.js", 'id="promote"')}
    for path, (title, script, part) in pages.items():
        r = c.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        assert f"<title>streamfuse · {title}</title>" in html and part in html
        assert f'<script src="/static/{script}"></script>' in html
        assert html.count('class="here"') == 1 and f'<a href="{path}" class="here">' in html
        assert "$" not in html  # every placeholder filled
    assert c.get("/favicon.ico").headers["content-type"].startswith("image/svg")


def test_teach_api_answers_hostile_bodies_with_a_clear_error(tmp_path: Path) -> None:
    """JSON that is not an object, malformed JSON, fields of the wrong type and bodies over
    the limit: each a 4xx naming the problem (they were 500s, and a body of any size was read
    into memory whole), and nothing published."""
    import zmq
    from starlette.testclient import TestClient

    from streamfuse.web.server import Console
    from streamfuse.web.teach import MAX_BODY

    bus_in = f"ipc://{tmp_path}/in"
    cfg = config.parse({"sources": [{"name": "room1"}], "bus": {"input": bus_in},
                        "record": {"path": str(tmp_path)},
                        "fusion": {"model": str(tmp_path / "model")}}, environ={})
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.subscribe(b"")
    sub.bind(bus_in)  # where the console's label publisher connects
    console = Console(cfg, health=health.HealthReader(None, None))
    console.teach.ctx = ctx
    c = TestClient(console.app(), base_url="http://127.0.0.1:8080", raise_server_exceptions=False)
    json_type = {"content-type": "application/json"}
    label = {"source": "room1", "label": "x"}
    cases: list[tuple[str, bytes | str, int]] = [
        (path, body, 400) for path in ("/api/label", "/api/train", "/api/models")
        for body in ("[1, 2]", '"x"', "7", "null", "{bad", b"\xff\xfe", "[" * 10_000 + "]" * 10_000)
    ]
    cases += [(path, b"{" + b" " * MAX_BODY + b"}", 413)
              for path in ("/api/label", "/api/train", "/api/models")]
    cases += [("/api/label", json.dumps({**label, "action": "span", "seconds": s}), 400)
              for s in ("abc", [1], {"a": 1}, None, 1e-10, 1e400, -1, 86_401, True)]
    cases += [("/api/train", json.dumps(body), 400) for body in (
        {"recordings": 5}, {"recordings": "abc"}, {"recordings": [["a.mcap"]]},
        {"recordings": {"a.mcap": 1}}, {"recordings": None})]
    (tmp_path / "a.mcap").write_bytes(b"")
    cases += [("/api/train", json.dumps({"recordings": ["a.mcap"], "epochs": e}), 400)
              for e in ("x", 1e400, [1], 2.5, 0, None)]
    try:
        for path, body, status in cases:
            r = c.post(path, content=body, headers=json_type)
            assert r.status_code == status, (path, body[:40], r.status_code, r.text[:200])
            assert r.json()["error"], (path, body[:40])
        assert console.teach.job is None and not sub.poll(200)
    finally:
        console.teach.close()
        sub.close()
        ctx.term()
