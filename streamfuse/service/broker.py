"""The bus: one XSUB/XPUB proxy (docs/architecture.md, "The broker").

Producers connect PUB sockets to ``bus.input`` (XSUB), consumers connect SUB
sockets to ``bus.output`` (XPUB). Forwarding is ZeroMQ's own ``zmq.proxy`` in C:
payloads are never copied into Python. ``bus.public`` adds a TCP input for
remote captures and ``bus.public_output`` a TCP output for remote subscribers.

``bus.results`` (and the TCP ``bus.public_results``) serve only what the daemon
concludes (topics under ``wire.topics.RESULT_PREFIXES``), never frames, audio or
text: a second proxy reads the output through a SUB subscribed to those prefixes
and republishes on a PUB. The filter is the SUB's subscription, so a results
subscriber that subscribes to everything still receives no media.

When ``[bus.curve]`` is enabled every TCP endpoint is a CurveZMQ server that
accepts only the public keys in ``bus.curve.authorized``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

from streamfuse import clock
from streamfuse.config import BusConfig, Config, ConfigError, is_local_endpoint
from streamfuse.service.public import PublicOutput
from streamfuse.wire import topics
from streamfuse.wire.sockets import (
    apply_curve_server,
    check_authorized,
    load_server_keys,
    max_message_bytes,
    prepare_endpoint,
    remove_stale_ipc,
    start_authenticator,
)

log = logging.getLogger("streamfuse.broker")


ENDPOINT_KEYS = ("input", "output", "public", "public_output", "results", "public_results")


def _curve_endpoints(bus: BusConfig) -> list[str]:
    """The broker's endpoints that are CurveZMQ servers: every tcp:// one when enabled."""
    eps = [getattr(bus, k) for k in ENDPOINT_KEYS]
    return [e for e in eps if bus.curve.enabled and e.startswith("tcp://")]


def check_security(bus: BusConfig) -> None:
    """Refuse a non-loopback TCP endpoint unless CurveZMQ keys are configured."""
    for key in ENDPOINT_KEYS:
        ep = getattr(bus, key)
        if ep and not is_local_endpoint(ep) and not (bus.curve.enabled and bus.curve.server_secret):
            raise ConfigError(
                f"bus.{key}: {ep} is reachable from the network; set [bus.curve] enabled, "
                "server_secret and authorized (streamfuse keys generate DIR) "
                "or use a loopback address"
            )


SUBSCRIPTION_MAX_BYTES = 64 * 1024
REJECT_LOG_EVERY_S = 10.0
_NO_KEY = "no CurveZMQ key: handshake failed"
_REJECT_EVENTS: dict[int, str] = {
    # a client without keys speaks the NULL mechanism: libzmq reports no detail, or (depending
    # on how the greetings cross) a protocol error with the value MECHANISM_MISMATCH
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: _NO_KEY,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "CurveZMQ protocol error",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "key not authorised",
}


def reject_reason(event: int, value: int) -> str | None:
    """Why a CurveZMQ endpoint turned a client away, from a socket-monitor event and its
    value; None for events that are not a rejection."""
    if (event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH):
        return _NO_KEY
    return _REJECT_EVENTS.get(event)


class _RejectionLog:
    """Log clients the CurveZMQ endpoints turn away (no key, unknown key).

    libzmq reports failed handshakes only as socket-monitor events; this thread
    reads them and logs one line per endpoint and reason, then at most one
    summary line every ``REJECT_LOG_EVERY_S`` so a scanner cannot flood the log.
    """

    def __init__(self, ctx: zmq.Context, socks: dict[str, zmq.Socket], tag: int) -> None:
        self._stop = threading.Event()
        # The readers connect here, before the broker says it is ready: libzmq drops monitor
        # events while no reader is connected, and a client turned away in that gap (one that
        # does not retry) would never be logged. The thread takes the sockets over; starting
        # it is the memory barrier libzmq asks for when a socket changes threads.
        self._socks: dict[zmq.Socket, str] = {}
        for name, sock in socks.items():
            ep = f"inproc://broker-monitor-{tag}-{name}"
            sock.monitor(ep, sum(_REJECT_EVENTS))  # set up in the thread that owns sock
            reader = ctx.socket(zmq.PAIR)
            reader.linger = 0
            reader.connect(ep)
            self._socks[reader] = name
        self._thread = threading.Thread(target=self._run, name="broker-auth-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        socks = self._socks
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        counts: dict[tuple[str, str], int] = {}
        last: dict[tuple[str, str], int] = {}
        try:
            while not self._stop.is_set():
                for s, _ in poller.poll(200):
                    ev = recv_monitor_message(s)
                    reason = reject_reason(ev["event"], ev["value"])
                    if reason is None:
                        continue
                    key = (socks[s], reason)
                    counts[key] = counts.get(key, 0) + 1
                    now = clock.monotonic_ns()
                    if key not in last or now - last[key] >= REJECT_LOG_EVERY_S * clock.NS_PER_S:
                        last[key] = now
                        endpoint = ev.get("endpoint", b"")
                        endpoint = (endpoint.decode() if isinstance(endpoint, bytes)
                                    else str(endpoint))
                        log.warning("bus %s %s: rejected a client (%s); %d rejected so far",
                                    socks[s], endpoint, reason, counts[key])
        finally:
            for s in socks:
                s.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class _ResultsProxy:
    """The results endpoints: a SUB on the bus output, subscribed to the result
    prefixes only, forwarded by ``zmq.proxy`` (C) to a PUB bound by the broker.

    A PUB rather than an XPUB: libzmq handles its peers' subscriptions itself, so
    nothing has to read them (unread XPUB subscription messages pile up). Its
    ``maxmsgsize`` bounds what a peer may send it, which is only subscriptions.
    The sockets are created in the broker's thread and handed to the proxy thread
    by ``start()`` (a thread start is the memory barrier libzmq asks for).
    """

    def __init__(self, ctx: zmq.Context, output: str, hwm: int, *, tag: int) -> None:
        self.ctx = ctx
        self._control_endpoint = f"inproc://broker-results-control-{tag}"
        self.sub = ctx.socket(zmq.SUB)
        self.pub = ctx.socket(zmq.PUB)
        self._control = ctx.socket(zmq.PAIR)
        for s in (self.sub, self.pub, self._control):
            s.linger = 0
        self.sub.rcvhwm = self.pub.sndhwm = hwm
        self.pub.maxmsgsize = SUBSCRIPTION_MAX_BYTES
        for prefix in topics.RESULT_PREFIXES:
            self.sub.subscribe(prefix.encode())
        self.sub.connect(output)
        self._control.bind(self._control_endpoint)
        self._thread = threading.Thread(target=self._run, name="broker-results", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.sub, self.pub, None, self._control)
        except zmq.ContextTerminated:
            pass
        finally:
            for s in (self.sub, self.pub, self._control):
                s.close(linger=0)

    def stop(self) -> None:
        """Ask the proxy to return and wait for it (or close the unstarted sockets)."""
        if not self._thread.is_alive():
            if self._thread.ident is None:
                for s in (self.sub, self.pub, self._control):
                    s.close(linger=0)
            return
        try:
            sock = self.ctx.socket(zmq.PAIR)
        except zmq.ContextTerminated:  # the proxy sees the same and returns by itself
            self._thread.join(5)
            return
        sock.linger = 0
        try:
            sock.connect(self._control_endpoint)
            sock.send(b"TERMINATE")
            self._thread.join(5)  # the sender stays open until the proxy has read it
        finally:
            sock.close()


class Broker:
    """Bind the bus and forward until :meth:`stop`.

    ``on_ready`` is called once every endpoint is bound (the supervisor uses it
    for ``READY=1``).
    """

    def __init__(self, bus: BusConfig, ctx: zmq.Context | None = None) -> None:
        check_security(bus)
        self.bus = bus
        self._keys = (b"", b"")
        if _curve_endpoints(bus):
            # Check the keys here, in the caller's thread, so a bad path is a
            # config error (exit 2) and not a dead proxy thread.
            self._keys = load_server_keys(bus)
            check_authorized(bus)
        self.ctx = ctx or zmq.Context.instance()
        self._control_endpoint = f"inproc://broker-control-{id(self)}"
        self._auth: Any = None
        self._stopped = threading.Event()

    def _bind(self, sock: zmq.Socket, local: str, public: str) -> None:
        # libzmq snapshots security options per bind: endpoints bound before the
        # CurveZMQ options are set stay plain. With [bus.curve] enabled every
        # tcp:// endpoint is a CurveZMQ server (matching wire.sockets, whose
        # clients use keys for every tcp:// endpoint then); ipc:// stays plain.
        curve = self.bus.curve.enabled
        plain = [e for e in (local, public) if e and not (curve and e.startswith("tcp://"))]
        secure = [e for e in (local, public) if e and e not in plain]
        for ep in plain:
            prepare_endpoint(ep)
            remove_stale_ipc(ep)
            sock.bind(ep)
        if secure:
            apply_curve_server(sock, self._keys)
            for ep in secure:
                sock.bind(ep)

    def _public_output(self, inner_output: str) -> PublicOutput:
        """``bus.public_output`` on its own XPUB, fed with frames made inline."""
        bus = self.bus
        xpub = self.ctx.socket(zmq.XPUB)
        xpub.linger = 0
        xpub.sndhwm = bus.hwm * 10
        xpub.maxmsgsize = SUBSCRIPTION_MAX_BYTES
        public = PublicOutput(self.ctx, inner_output, xpub, hwm=bus.hwm * 10,
                              max_bytes=max_message_bytes(bus))
        try:
            self._bind(xpub, "", bus.public_output)
        except BaseException:
            public.stop()  # closes both of its sockets, or the context could never terminate
            raise
        return public

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        bus = self.bus
        curve = bool(_curve_endpoints(bus))
        if curve:
            self._start_auth()
        xsub = self.ctx.socket(zmq.XSUB)
        xpub = self.ctx.socket(zmq.XPUB)
        control = self.ctx.socket(zmq.PAIR)
        for s in (xsub, xpub, control):
            s.linger = 0
        xsub.rcvhwm = bus.hwm * 10
        xpub.sndhwm = bus.hwm * 10
        xsub.maxmsgsize = max_message_bytes(bus)
        xpub.maxmsgsize = SUBSCRIPTION_MAX_BYTES  # it reads only subscriptions from its peers
        monitor: _RejectionLog | None = None
        results: _ResultsProxy | None = None
        public: PublicOutput | None = None
        # With the frame plane, remote subscribers get pixels through PublicOutput.
        by_ref = bus.frame_plane == "shm" and bool(bus.public_output)
        try:
            self._bind(xsub, bus.input, bus.public)
            self._bind(xpub, bus.output, "" if by_ref else bus.public_output)
            inner_output = f"inproc://broker-output-{id(self)}"
            xpub.bind(inner_output)
            if by_ref:
                public = self._public_output(inner_output)
            control.bind(self._control_endpoint)
            results = _ResultsProxy(self.ctx, inner_output, bus.hwm * 10, tag=id(self))
            self._bind(results.pub, bus.results, bus.public_results)
            if curve:
                watched = {"input": xsub, "output": xpub, "results": results.pub}
                if public is not None:
                    watched["public_output"] = public.xpub
                monitor = _RejectionLog(self.ctx, watched, id(self))
            results.start()
            if public is not None:
                public.start()
            log.info("bus up: input %s output %s results %s%s", bus.input, bus.output, bus.results,
                     "".join(f" {k} {getattr(bus, k)}" for k in
                             ("public", "public_output", "public_results") if getattr(bus, k)))
            if on_ready is not None:
                on_ready()
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            if results is not None:
                results.stop()
            if public is not None:
                public.stop()
            if monitor is not None:
                monitor.stop()
            for s in (xsub, xpub, control):
                s.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self._stopped.set()

    def _start_auth(self) -> None:
        self._auth = start_authenticator(self.ctx, self.bus, "streamfuse.auth")

    def stop(self) -> None:
        """Ask the proxy to return (safe from another thread)."""
        sock = self.ctx.socket(zmq.PAIR)
        sock.linger = 0
        try:
            sock.connect(self._control_endpoint)
            sock.send(b"TERMINATE")
            # Keep the sender open until the proxy has returned: an inproc PAIR
            # whose peer closes before the first read loses the message, and a
            # stop() right after start-up would then never stop the proxy.
            self._stopped.wait(5)
        finally:
            sock.close()


def main(cfg: Config, *, stop: threading.Event) -> int:
    """``streamfuse broker``: run the bus until ``stop`` is set."""
    broker = Broker(cfg.bus, zmq.Context())
    t = threading.Thread(target=broker.run, name="broker", daemon=True)
    t.start()
    while not stop.wait(0.2):
        if not t.is_alive():
            return 1
    broker.stop()
    t.join(5)
    broker.ctx.term()
    return 0
