"""``streamfuse web``: the live console, an ASGI app (Starlette) served by uvicorn.

Pages: ``/`` (live: camera, microphone, text, classification, label timeline),
``/health`` (children, stream rates, drops, latency), ``/recordings`` (files under
``record.path``, with downloads), ``/teach`` (label live, train, shadow, promote:
:mod:`streamfuse.web.teach`). Data: ``/ws`` (the live protocol, see
:mod:`streamfuse.web.live`), ``/api/health``, ``/api/recordings``. Static files come
from the package (``streamfuse/web/static``), so the console works offline.

Access: with ``web.token`` set, every request needs it (``Authorization: Bearer``, the
cookie that ``?token=`` sets, or ``?token=`` itself); without it, 401. Without a token
(allowed on loopback only) requests must name a loopback host, so a web page elsewhere
cannot reach the console through DNS rebinding, and a WebSocket must come from the
console's own origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import string
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from streamfuse import clock, readiness
from streamfuse.config import Config
from streamfuse.web.bus import BusReader
from streamfuse.web.health import HealthReader
from streamfuse.web.live import Client, Hub
from streamfuse.web.recordings import Recordings
from streamfuse.web.state import ConsoleState
from streamfuse.web.teach import Teach

log = logging.getLogger("streamfuse.web")
STATIC = Path(__file__).parent / "static"
PAGE_DIR = Path(__file__).parent / "pages"
COOKIE = "streamfuse_token"
HEALTH_CACHE_NS = 500_000_000  # several open health pages share one read of the files
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")


class Access:
    """ASGI middleware: token check (HTTP and WebSocket), loopback Host/Origin check without one."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        problem = self._problem(scope, headers, query)
        if problem:
            await self._refuse(scope, receive, send, problem)
            return
        if self.token and query.get("token") and scope["type"] == "http":
            # Once: set the cookie and drop the token from the address bar and history.
            rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
            resp = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _problem(self, scope: Scope, headers: dict[str, str], query: dict[str, str]) -> str:
        if self.token:
            given = [query.get("token", "")]
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given.append(auth[7:].strip())
            for part in headers.get("cookie", "").split(";"):
                k, _, v = part.strip().partition("=")
                if k == COOKIE:
                    given.append(v)
            ok = any(g and hmac.compare_digest(g.encode(), self.token.encode()) for g in given)
            return "" if ok else "401 a token is required (web.token)"
        host = urlsplit(f"//{headers.get('host', '')}").hostname or ""
        if host not in LOOPBACK_HOSTS and not host.startswith("127."):
            return f"403 host {host!r} is not a loopback name"
        origin = headers.get("origin")
        same = origin is None or urlsplit(origin).netloc == headers.get("host")
        if scope["type"] == "websocket" and not same:
            return f"403 origin {origin!r} is not this console"
        return ""

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, problem: str) -> None:
        code, _, why = problem.partition(" ")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": why})
            return
        resp = PlainTextResponse(why + "\n", status_code=int(code),
                                 headers={"WWW-Authenticate": "Bearer"} if code == "401" else None)
        await resp(scope, receive, send)


# path -> (title, body in pages/, script in static/, connection indicator before it runs);
# the order is the navigation bar's
PAGES = {"/": ("live", "live.html", "console.js", "connecting…"),
         "/health": ("health", "health.html", "health.js", "loading…"),
         "/recordings": ("recordings", "recordings.html", "recordings.js", ""),
         "/teach": ("teach", "teach.html", "teach.js", "")}


def render_page(path: str) -> str:
    """One console page: the shared frame (head, navigation) around the page's body."""
    title, body, script, conn = PAGES[path]
    here = {p: ' class="here"' if p == path else "" for p in PAGES}
    nav = "".join(f'<a href="{p}"{here[p]}>{t.capitalize()}</a>' for p, (t, *_) in PAGES.items())
    frame = string.Template((PAGE_DIR / "frame.html").read_text("utf-8"))
    return frame.substitute(title=title, nav=nav, conn=conn, script=script,
                            main=(PAGE_DIR / body).read_text("utf-8"))


def _page(path: str) -> Any:
    async def page(_: Request) -> Response:
        return HTMLResponse(render_page(path), headers={"Cache-Control": "no-cache"})

    return page


def _file(name: str) -> Any:
    async def file(_: Request) -> Response:
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return file


class Console:
    """The console's parts: state, bus reader, hub, health and recordings readers."""

    def __init__(self, cfg: Config, *, health: HealthReader | None = None) -> None:
        self.cfg = cfg
        self.state = ConsoleState(s.name for s in cfg.sources)
        self.hub = Hub(self.state, cfg.web.max_fps)
        self.health = health or HealthReader.from_environment()
        self.recordings = Recordings(cfg.record.path)
        self.teach = Teach(cfg, self.state, self.recordings)
        self._health_cache: tuple[int, dict[str, Any]] = (0, {})

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        reader = BusReader(self.cfg.bus, self.state)
        reader.start()
        self.teach.connect()
        hub = asyncio.create_task(self.hub.run())
        readiness.report("ready")
        try:
            yield
        finally:
            hub.cancel()
            reader.close()
            self.teach.close()

    async def api_health(self, _: Request) -> Response:
        now = clock.monotonic_ns()
        at, data = self._health_cache
        if not data or now - at > HEALTH_CACHE_NS:
            data = await asyncio.to_thread(self.health.read, now)
            data["sources"] = self.state.sources()
            self._health_cache = (now, data)
        return JSONResponse(data)

    async def api_recordings(self, _: Request) -> Response:
        files = await asyncio.to_thread(self.recordings.list)
        return JSONResponse({"path": str(self.recordings.directory), "files": files})

    async def download(self, request: Request) -> Response:
        p = self.recordings.path(request.path_params["name"])
        if p is None:
            return PlainTextResponse("no such recording\n", status_code=404)
        return FileResponse(p, filename=p.name, media_type="application/octet-stream")

    async def live(self, ws: WebSocket) -> None:
        await ws.accept()
        client = Client(ws)
        self.hub.clients.add(client)
        pump = asyncio.create_task(client.pump(self.state, self.hub.sent))
        try:
            await ws.send_text(self.hub.hello())
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("text") == "a":
                    client.ack()
        except WebSocketDisconnect:
            pass
        finally:
            self.hub.clients.discard(client)
            pump.cancel()
            # a browser gone mid-send ends its pump with the server's own disconnect error
            gone = (asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError)
            with contextlib.suppress(*gone):
                await pump

    def app(self) -> ASGIApp:
        routes = [
            *(Route(path, _page(path)) for path in PAGES),
            Route("/api/label", self.teach.api_label, methods=["POST"]),
            Route("/api/labels", self.teach.api_labels),
            Route("/api/train", self.teach.api_train, methods=["GET", "POST", "DELETE"]),
            Route("/api/train/{name}.png", self.teach.api_train_plot),
            Route("/api/models", self.teach.api_models, methods=["GET", "POST"]),
            Route("/api/health", self.api_health),
            Route("/api/recordings", self.api_recordings),
            Route("/recordings/{name}", self.download),
            Route("/favicon.ico", _file("favicon.svg")),
            WebSocketRoute("/ws", self.live),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        return Access(Starlette(routes=routes, lifespan=self.lifespan), self.cfg.web.token)


def url(cfg: Config) -> str:
    """The console's address as a browser on this host would type it."""
    host, _, port = cfg.web.listen.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/"


def _server(app: ASGIApp, cfg: Config) -> Any:
    import uvicorn

    class Server(uvicorn.Server):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # streamfuse's Signals own SIGTERM/SIGINT (exit 0 like every node); uvicorn's
            # would re-raise the signal after a graceful stop and die of it.
            yield

    host, _, port = cfg.web.listen.rpartition(":")
    return Server(uvicorn.Config(
        app, host=host.strip("[]") or "0.0.0.0", port=int(port), ws="auto", log_level="warning",
        lifespan="on", timeout_graceful_shutdown=1, access_log=False))


async def serve(cfg: Config, stop: threading.Event) -> bool:
    """Serve until ``stop`` is set; False when the console could not start (port taken)."""
    server = _server(Console(cfg).app(), cfg)

    async def watch() -> None:
        while not stop.is_set() and not server.should_exit:
            await asyncio.sleep(0.1)
        server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()
    return bool(server.started)
