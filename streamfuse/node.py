"""The runtime every node process shares: its ZeroMQ context and sockets, readiness and an
orderly close (docs/architecture.md).

A node is a pure core (:class:`~streamfuse.align.window.Aligner`, the fusion ``Batcher``,
a capture's publisher) plus a short loop; what is left is the same in every node and lives
here, once:

- :class:`Runtime` owns the ``zmq.Context`` (or uses one passed in, which it leaves open)
  and every socket it opened; sockets a test passes in are used as they are and never
  closed here. Each socket it opened is closed with its own linger: 0 for a receiver
  (nothing of it is worth waiting for), a bounded one for a sender (what is queued gets
  out, a gone peer cannot hang the exit).
- :meth:`Runtime.open` closes everything at once (linger 0) when a socket cannot be opened,
  so the context can always terminate, and re-raises: the node logs its own line and
  returns ``EXIT_CANNOT_OPEN`` for :data:`OPEN_ERRORS`; a ``ConfigError`` (exit 2) or an
  interrupt passes through.
- :meth:`Runtime.ready` tells the supervisor the node is up (:mod:`streamfuse.readiness`).
- :func:`polling` and :class:`Every` are the loop: wait for input at most one tick, until
  the stop event; run periodic work when it is due.

Signals (:mod:`streamfuse.signals`) and metrics serving stay with the command that starts
the node: a node only sees the stop event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from types import TracebackType

import zmq

from streamfuse import readiness

EXIT_CANNOT_OPEN = 1
# What a failed bind or connect raises: ZeroMQ's errors, and the OSError of an ipc:// directory
# that cannot be made.
OPEN_ERRORS = (zmq.ZMQError, OSError)


class Runtime:
    """A node's context and the sockets it opened; a context manager that closes them."""

    def __init__(self, ctx: zmq.Context | None = None) -> None:
        self._ctx = ctx
        self._own_ctx = False
        self._opened: list[tuple[zmq.Socket, int]] = []  # (socket, linger at close)

    @property
    def ctx(self) -> zmq.Context:
        """The context: the one passed in, else one made (and terminated) here."""
        if self._ctx is None:
            self._ctx = zmq.Context()
            self._own_ctx = True
        return self._ctx

    def open(self, given: zmq.Socket | None, make: Callable[[zmq.Context], zmq.Socket], *,
             linger: int = 0) -> zmq.Socket:
        """``given`` when there is one (a test's socket: not closed here), else
        ``make(ctx)``, closed by :meth:`close` with ``linger`` ms. When ``make`` raises,
        everything opened so far is closed at once and the error is re-raised."""
        if given is not None:
            return given
        try:
            sock = make(self.ctx)
        except BaseException:
            self.abort()
            raise
        self._opened.append((sock, linger))
        return sock

    def ready(self, **fields: object) -> None:
        """Tell the supervisor this node is up."""
        readiness.report("ready", **fields)

    def close(self) -> None:
        """Close the sockets opened here (each with its linger), then an own context: waits
        at most the longest linger for what is queued to get out."""
        for sock, linger in reversed(self._opened):
            sock.close(linger=linger)
        self._opened.clear()
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def abort(self) -> None:
        """Close everything opened here at once, queued messages dropped."""
        for sock, _ in self._opened:
            sock.close(linger=0)
        self._opened.clear()
        if self._own_ctx and self._ctx is not None:
            self._ctx.destroy(linger=0)  # also a socket a failed helper left open
            self._ctx = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def polling(sock: zmq.Socket, tick_ms: int, stop: threading.Event) -> Iterator[bool]:
    """Until ``stop`` is set: wait at most ``tick_ms`` for input on ``sock``, then yield
    whether there is some (so the loop body runs at least once a tick)."""
    while not stop.is_set():
        yield bool(sock.poll(tick_ms))


class Every:
    """Periodic work in a loop: :meth:`due` is True once ``period_ns`` has passed since
    it last was (or since ``start_ns``)."""

    def __init__(self, period_ns: int, start_ns: int) -> None:
        self.period_ns = period_ns
        self.next_ns = start_ns + period_ns

    def due(self, now_ns: int) -> bool:
        if now_ns < self.next_ns:
            return False
        self.next_ns = now_ns + self.period_ns
        return True
