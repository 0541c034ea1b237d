"""A real IP camera for tests: MJPEG over HTTP (``multipart/x-mixed-replace``), in threads.

Frames are drawn with OpenCV by :func:`tests.helpers.media.counter_frame`: each
carries its counter as visible text and coded in pixels, so a subscriber can read
it back with :func:`tests.helpers.media.read_counter`. The counter is the frame's
index on the camera's own timeline (``int(elapsed * fps)`` since the object was
created), so it keeps increasing across :meth:`stop` / :meth:`start`: after a
restart the counters jump forward by the time the camera was down, like a live camera.

Usage::

    from tests.helpers.mjpeg import MjpegCamera
    from tests.helpers import media

    with MjpegCamera(fps=30, width=320, height=240) as cam:
        # cv2.VideoCapture(cam.url) or [sources.video] device = cam.url
        ...
        cam.stop()            # listening socket and every open stream closed
        cam.start()           # same port again
        assert cam.frames_served > 0
        sent_ns = cam.sent_ns[counter]   # time.time_ns() just before that frame was first sent

``stop()`` really closes the TCP connections, so a client sees the stream end
(that is what a camera losing power looks like to OpenCV).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from tests.helpers import media

BOUNDARY = "frame"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    camera: MjpegCamera


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        cam = self.server.camera
        if self.path.split("?")[0] not in ("/", "/stream.mjpg", "/video"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        cam._register(self.connection)
        try:
            if cam.mode != "good":
                self._hostile(cam)
                return
            last = -1
            while not cam._down.is_set():
                n, data = cam._frame_after(last)
                if data is None:
                    break
                cam._sending(n)
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                    + data + b"\r\n")
                self.wfile.flush()
                cam._served(n)
                last = n
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the client went away, or stop() closed the connection: both end the stream
        finally:
            cam._unregister(self.connection)

    def _hostile(self, cam: MjpegCamera) -> None:
        """``garbage``: random bytes after one part header, forever; ``stall``: half a JPEG, then
        nothing with the connection held open. Both until stop() or ``mode`` changes.
        ``one``: one good frame, then the connection is closed (a camera that fails just after
        each connect)."""
        data = media.jpeg(media.counter_frame(0, cam.width, cam.height), cam.quality)
        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                         f"Content-Length: {len(data)}\r\n\r\n".encode())
        if cam.mode == "one":
            self.wfile.write(data + b"\r\n")
            self.wfile.flush()
            cam.connections_served += 1
            return
        if cam.mode == "stall":
            self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        mode = cam.mode
        while cam.mode == mode and not cam._down.wait(0.01):
            if mode == "garbage":
                self.wfile.write(os.urandom(64 * 1024))
                cam.garbage_sent += 64 * 1024


class MjpegCamera:
    """An MJPEG HTTP camera on ``host:port`` (port 0: pick a free one, kept across restarts)."""

    def __init__(self, *, fps: float = 30.0, width: int = 320, height: int = 240,
                 host: str = "127.0.0.1", port: int = 0, quality: int = 85) -> None:
        self.fps = fps
        self.width = width
        self.height = height
        self.host = host
        self.port = port
        self.quality = quality
        # "good" serves frames; "garbage", "stall" and "one" serve hostile streams (see _hostile)
        self.mode = "good"
        self.connections_served = 0  # by "one"
        self.garbage_sent = 0
        self.frames_served = 0
        self.sent_ns: dict[int, int] = {}
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._cache: tuple[int, bytes] = (-1, b"")
        self._conns: set[socket.socket] = set()
        self._down = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/stream.mjpg"

    def start(self) -> MjpegCamera:
        if self._server is not None:
            return self
        self._down.clear()
        deadline = time.monotonic() + 5
        while True:
            try:
                server = _Server((self.host, self.port), _Handler)
                break
            except OSError:  # the old socket may linger a moment after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.camera = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mjpeg-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open stream."""
        server, self._server = self._server, None
        if server is None:
            return
        self._down.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # ------------------------------------------------------------------ handler side

    def _register(self, c: socket.socket) -> None:
        with self._lock:
            self._conns.add(c)

    def _unregister(self, c: socket.socket) -> None:
        with self._lock:
            self._conns.discard(c)

    def _sending(self, n: int) -> None:
        with self._lock:
            self.sent_ns.setdefault(n, time.time_ns())

    def _served(self, n: int) -> None:
        with self._lock:
            self.frames_served += 1

    def _frame_after(self, last: int) -> tuple[int, bytes | None]:
        """Wait for the next frame tick after ``last``; its counter and JPEG (None when stopped)."""
        while True:
            n = int((time.monotonic() - self._t0) * self.fps)
            if n > last:
                break
            wait = self._t0 + (last + 1) / self.fps - time.monotonic()
            if self._down.wait(max(wait, 0.0005)):
                return n, None
        with self._lock:
            if self._cache[0] == n:
                return n, self._cache[1]
        data = media.jpeg(media.counter_frame(n, self.width, self.height), self.quality)
        with self._lock:
            self._cache = (n, data)
        return n, data

    def __enter__(self) -> MjpegCamera:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
