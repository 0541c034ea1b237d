"""The console's Teach page: label live, train from recordings, judge, promote, roll back.

API (JSON; the page is ``/teach``):

- ``POST /api/label`` ``{"source", "label", "action": "start"}`` publishes an open-ended
  label stamped now; ``{"source", "action": "stop"}`` ends it; ``"action": "span"`` with
  ``"seconds"`` publishes ``[now, now + seconds)``. Holding the page's button is a start
  on press and a stop on release, both stamped by this server's clock. Unknown source,
  empty or over-long label: 400 with the reason, nothing published.
- ``GET /api/labels?source=S`` the source's labelled spans of the last three minutes.
- ``GET/POST/DELETE /api/train``: the training job (one at a time): status with the last
  progress line, start ``{"recordings": [names under record.path], "epochs": N,
  "modalities": [some of video, audio, text]}`` (default: every one in the data), cancel.
  The artifact goes to ``<directory of fusion.model>/candidates/<UTC time>``; when the job
  ends its report (the manifest's metrics and data summary) is in the status, and
  ``GET /api/train/confusion.png`` and ``/api/train/reliability.png`` draw its validation
  confusion matrix and reliability diagram.
- ``GET/POST /api/models``: live, previous and shadow ids, and ``captured``: the modalities
  the configured sources capture (null: none configured), which a shadow may use;
  ``{"action": "shadow", "dir"}``,
  ``{"action": "promote"}``, ``{"action": "rollback"}`` do what ``streamfuse shadow``,
  ``promote`` and ``rollback`` do (:mod:`streamfuse.fusion.store`).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from streamfuse import clock
from streamfuse.config import Config
from streamfuse.web.recordings import Recordings
from streamfuse.web.state import TIMELINE_NS, ConsoleState
from streamfuse.wire import codec
from streamfuse.wire.sockets import connect_pub

AHEAD_NS = 5 * clock.NS_PER_S
PLOTS = ("confusion", "reliability")
_PLOTTING = threading.Lock()  # pyplot's figures are global state: one drawing at a time
MODALITIES = ("video", "audio", "text")


def _bad(why: str, status: int = 400) -> Response:
    return JSONResponse({"error": why}, status_code=status)


def _foreign(request: Request) -> Response | None:
    """Refuse a change asked by another site's page: only this console's own pages send
    JSON from its own origin (a cross-site form can send neither)."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return _bad(f"origin {origin!r} is not this console", 403)
    if request.method == "POST" and not request.headers.get("content-type", "").startswith(
        "application/json"
    ):
        return _bad("expected Content-Type: application/json", 415)
    return None


# The largest request body read: the page's requests are a few hundred bytes (a list of
# recording names at most); a body is read whole before it is parsed, so beyond this 413.
MAX_BODY = 64 * 1024


async def _json_object(request: Request) -> dict[str, Any] | Response:
    """The request's JSON object, or the error response for a body that is too large, not
    JSON, or JSON but not an object."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return _bad(f"the request body is over {MAX_BODY} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return _bad(f"the request body is over {MAX_BODY} bytes", 413)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return _bad("expected a JSON object")
    return data


class TrainJob:
    """One ``streamfuse train`` child process and what it said."""

    def __init__(
        self,
        cfg: Config,
        paths: list[Path],
        epochs: int,
        out: Path,
        modalities: list[str] | None = None,
    ) -> None:
        self.out = out
        self.log = out.with_name(out.name + ".log")
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "streamfuse",
            "train",
            "--recordings",
            *map(str, paths),
            "--out",
            str(out),
            "--epochs",
            str(epochs),
        ]
        if modalities:
            argv += ["--modalities", *modalities]
        if cfg.path:
            argv += ["--config", cfg.path]
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.cancelled = False

    def status(self) -> dict[str, Any]:
        code = self.proc.poll()
        lines = [ln for ln in self.log.read_text("utf-8", "replace").splitlines() if ln.strip()]
        state = (
            "running"
            if code is None
            else "cancelled"
            if self.cancelled
            else "done"
            if code == 0
            else "failed"
        )
        out: dict[str, Any] = {"state": state, "dir": str(self.out), "progress": lines[-1:] or [""]}
        if state == "failed":
            out["error"] = "\n".join(lines[-5:])
        if state == "done":
            manifest = json.loads((self.out / "manifest.json").read_text())
            mets = manifest.get("metrics", {})
            out["report"] = {
                "model_id": manifest["model_id"],
                "classes": manifest["classes"],
                "metrics": mets,
                "windows": manifest.get("training", {}).get("train", {}).get("labelled"),
            }
            out["plots"] = [
                f"/api/train/{p}.png?model={manifest['model_id']}"
                for p in PLOTS
                if f"val_{p}" in mets
            ]
        return out

    def plot(self, name: str) -> Path | None:
        """The PNG of the finished job's validation ``name`` (one of :data:`PLOTS`), drawn
        beside the artifact the first time (not in it: promote copies the artifact)."""
        path = self.out.with_name(f"{self.out.name}.{name}.png")
        if path.exists():
            return path
        try:
            manifest = json.loads((self.out / "manifest.json").read_text())
            data = manifest["metrics"][f"val_{name}"]
        except (OSError, ValueError, KeyError):
            return None
        from streamfuse.train import evaluate

        tmp = path.with_name(path.name + ".tmp.png")
        with _PLOTTING:
            if name == "confusion":
                evaluate.plot_confusion(tmp, data, manifest["classes"])
            else:
                evaluate.plot_reliability(tmp, data, manifest["metrics"].get("val_ece", 0.0))
            tmp.replace(path)
        return path

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.cancelled = True
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            shutil.rmtree(self.out, ignore_errors=True)


class Teach:
    """State of the Teach page's endpoints (used from the server's event loop thread)."""

    def __init__(
        self,
        cfg: Config,
        state: ConsoleState,
        recordings: Recordings,
        ctx: zmq.Context | None = None,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.recordings = recordings
        self.ctx = ctx or zmq.Context.instance()
        self._pub: zmq.Socket | None = None
        self.job: TrainJob | None = None
        self._started: dict[str, int] = {}  # source -> t_ns of the label this console started

    def _stop_time(self, source: str, held_ms: object, now: int) -> int:
        """When a held label ends: its start plus how long the browser measured the hold
        (``held_ms``), so a request that waited in a queue does not shorten or stretch the
        span; ``now`` without one. The start may have waited too: the stop may then lie a
        little ahead of ``now``, never more than :data:`AHEAD_NS`."""
        t0 = self._started.pop(source, None)
        if t0 is None or not isinstance(held_ms, (int, float)) or not 0 <= held_ms < 86_400_000:
            return now
        return min(t0 + round(held_ms * clock.NS_PER_MS), now + AHEAD_NS)

    def close(self) -> None:
        if self.job is not None:
            self.job.cancel()
        if self._pub is not None:
            self._pub.close(linger=500)

    def _publisher(self) -> zmq.Socket:
        if self._pub is None:
            self._pub = connect_pub(self.ctx, self.cfg.bus)
        return self._pub

    def connect(self) -> None:
        """Connect the label publisher early, so the broker knows it before the first label."""
        self._publisher()

    async def api_label(self, request: Request) -> Response:
        if (refused := _foreign(request)) is not None:
            return refused
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        now = clock.now_ns()
        source, action = str(body.get("source", "")), body.get("action")
        known = set(self.state.sources()) | {s.name for s in self.cfg.sources}
        if source not in known:
            return _bad(f"unknown source {source!r} (known: {', '.join(sorted(known)) or 'none'})")
        if action == "stop":
            msg = codec.label_stop_message(
                source, 0, self._stop_time(source, body.get("held_ms"), now)
            )
        elif action in ("start", "span"):
            label = str(body.get("label", ""))
            why = codec.label_problem(label)
            if why:
                return _bad(why)
            end = None
            if action == "span":
                seconds = _number(body.get("seconds"))
                span_ns = round(seconds * clock.NS_PER_S) if seconds is not None else 0
                if not 0 < span_ns <= 86_400 * clock.NS_PER_S:
                    # (under a nanosecond the end would be the start, which no decoder takes)
                    return _bad("seconds: a number > 0 and <= 86400")
                end = now + span_ns
            msg = codec.label_message(source, 0, now, end, label)
            self._started[source] = now
        else:
            return _bad("action: start, stop or span")
        self._publisher().send_multipart(codec.encode(msg))
        return JSONResponse({"topic": msg.topic, "t_ns": now})

    async def api_labels(self, request: Request) -> Response:
        source = request.query_params.get("source", "")
        now = clock.now_ns()
        return JSONResponse(
            {
                "source": source,
                "now_ns": now,
                "spans": self.state.label_spans(source, now - TIMELINE_NS),
            }
        )

    async def api_train(self, request: Request) -> Response:
        if request.method != "GET" and (refused := _foreign(request)) is not None:
            return refused
        if request.method == "DELETE":
            if self.job is None:
                return _bad("no training job", 404)
            self.job.cancel()
            return JSONResponse(self.job.status())
        if request.method == "GET":
            return JSONResponse(self.job.status() if self.job else {"state": "idle"})
        if self.job is not None and self.job.proc.poll() is None:
            return _bad("a training job is already running; cancel it first", 409)
        body = await _json_object(request)
        if isinstance(body, Response):
            return body
        names = body.get("recordings") or []
        paths = [self.recordings.path(str(n)) for n in names] if isinstance(names, list) else []
        if not paths or any(p is None for p in paths):
            return _bad("recordings: choose one or more files of the recordings page")
        epochs = _number(body.get("epochs", 20))
        if epochs is None or epochs != int(epochs) or not 1 <= epochs <= 1000:
            return _bad("epochs: 1 to 1000")
        modalities = body.get("modalities")
        if modalities is not None and (
            not isinstance(modalities, list)
            or not modalities
            or any(m not in MODALITIES for m in modalities)
        ):
            return _bad("modalities: one or more of video, audio, text")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path(self.cfg.fusion.model).parent / "candidates" / stamp
        self.job = TrainJob(self.cfg, [p for p in paths if p is not None], int(epochs), out,
                            modalities)
        return JSONResponse(self.job.status())

    async def api_train_plot(self, request: Request) -> Response:
        name = request.path_params["name"]
        job = self.job
        if name not in PLOTS or job is None or job.proc.poll() != 0 or job.cancelled:
            return _bad("no such plot of a finished training job", 404)
        # In a thread: matplotlib takes a second to import and draw.
        path = await asyncio.to_thread(job.plot, name)
        if path is None:
            return _bad("this model's manifest has no such figure", 404)
        return FileResponse(path, media_type="image/png")

    async def api_models(self, request: Request) -> Response:
        body: dict[str, Any] | None = None
        if request.method == "POST":
            if (refused := _foreign(request)) is not None:
                return refused
            got = await _json_object(request)
            if isinstance(got, Response):
                return got
            body = got
        # In a thread: the store loads artifacts (torch: a second to import the first time)
        # and copies directories, which must not hold up the labels sent meanwhile.
        code, data = await asyncio.to_thread(self._models, body)
        return JSONResponse(data, status_code=code)

    def _models(self, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        from streamfuse.fusion import store

        if body is not None:
            action = body.get("action")
            try:
                if action == "shadow":
                    store.set_shadow(self.cfg, Path(str(body["dir"])) if body.get("dir") else None)
                elif action == "promote":
                    store.promote(self.cfg)
                elif action == "rollback":
                    store.rollback(self.cfg)
                else:
                    return 400, {"error": "action: shadow, promote or rollback"}
            except store.StoreError as e:
                return 400, {"error": str(e)}
            store.signal_daemon(self.cfg)
        shadow = store.shadow_dir(self.cfg)
        captured = store.captured_modalities(self.cfg)
        return 200, {
            "live": _id(store.live_dir(self.cfg)),
            "previous": _id(store.previous_dir(self.cfg)),
            "shadow": _id(shadow) if shadow else None,
            "shadow_dir": str(shadow) if shadow else None,
            "captured": [m for m in MODALITIES if m in captured] if captured is not None else None,
        }


def _number(value: object) -> float | None:
    """A finite JSON number (or a string of one), else None."""
    if isinstance(value, bool):
        return None
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _id(directory: Path) -> str | None:
    try:
        return str(json.loads((directory / "manifest.json").read_text())["model_id"])
    except (OSError, ValueError, KeyError):
        return None
