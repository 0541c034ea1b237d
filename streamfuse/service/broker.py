"""The bus: one XSUB/XPUB proxy (DESIGN.md section 1).

Producers connect PUB sockets to ``bus.input`` (XSUB), consumers connect SUB
sockets to ``bus.output`` (XPUB). Forwarding is ZeroMQ's own ``zmq.proxy`` in C:
payloads are never copied into Python. ``bus.public`` adds a TCP input for
remote captures and ``bus.public_output`` a TCP output for remote subscribers;
when ``[bus.curve]`` is enabled those TCP endpoints are CurveZMQ servers that
accept only the public keys in ``bus.curve.authorized``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

from streamfuse import clock
from streamfuse.config import BusConfig, Config, ConfigError, is_local_endpoint
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


def check_security(bus: BusConfig) -> None:
    """Refuse a non-loopback TCP endpoint unless CurveZMQ keys are configured."""
    for key in ("input", "output", "public", "public_output"):
        ep = getattr(bus, key)
        if ep and not is_local_endpoint(ep) and not (bus.curve.enabled and bus.curve.server_secret):
            raise ConfigError(
                f"bus.{key}: {ep} is reachable from the network; set [bus.curve] enabled, "
                "server_secret and authorized (streamfuse keys generate DIR) or use a loopback address"
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
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
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
                    if key not in last or now - last[key] >= REJECT_LOG_EVERY_S * 1e9:
                        last[key] = now
                        endpoint = ev.get("endpoint", b"")
                        endpoint = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
                        log.warning("bus %s %s: rejected a client (%s); %d rejected so far",
                                    socks[s], endpoint, reason, counts[key])
        finally:
            for s in socks:
                s.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Broker:
    """Bind the bus and forward until :meth:`stop`.

    ``on_ready`` is called once both sockets are bound (the supervisor uses it
    for ``READY=1``).
    """

    def __init__(self, bus: BusConfig, ctx: zmq.Context | None = None) -> None:
        check_security(bus)
        self.bus = bus
        self._keys = (b"", b"")
        if bus.curve.enabled and any(e.startswith("tcp://") for e in
                                     (bus.input, bus.output, bus.public, bus.public_output)):
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

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        bus = self.bus
        curve_eps = [e for e in (bus.input, bus.output, bus.public, bus.public_output)
                     if bus.curve.enabled and e.startswith("tcp://")]
        if curve_eps:
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
        try:
            self._bind(xsub, bus.input, bus.public)
            self._bind(xpub, bus.output, bus.public_output)
            control.bind(self._control_endpoint)
            if curve_eps:
                monitor = _RejectionLog(self.ctx, {"input": xsub, "output": xpub}, id(self))
            log.info("bus up: input %s output %s%s%s", bus.input, bus.output,
                     f" public {bus.public}" if bus.public else "",
                     f" public_output {bus.public_output}" if bus.public_output else "")
            if on_ready is not None:
                on_ready()
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
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
