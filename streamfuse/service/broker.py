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

from streamfuse.config import BusConfig, Config, ConfigError, is_local_endpoint
from streamfuse.wire.sockets import max_message_bytes, prepare_endpoint, remove_stale_ipc

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


def _apply_curve_server(sock: zmq.Socket, bus: BusConfig) -> None:
    import zmq.auth

    try:
        pub, secret = zmq.auth.load_certificate(bus.curve.server_secret)
    except (OSError, ValueError) as e:
        raise ConfigError(f"bus.curve.server_secret: cannot load key: {e}") from None
    if secret is None:
        raise ConfigError(f"bus.curve.server_secret: {bus.curve.server_secret} holds no secret key")
    sock.curve_secretkey = secret
    sock.curve_publickey = pub
    sock.curve_server = True


class Broker:
    """Bind the bus and forward until :meth:`stop`.

    ``on_ready`` is called once both sockets are bound (the supervisor uses it
    for ``READY=1``).
    """

    def __init__(self, bus: BusConfig, ctx: zmq.Context | None = None) -> None:
        check_security(bus)
        self.bus = bus
        self.ctx = ctx or zmq.Context.instance()
        self._control_endpoint = f"inproc://broker-control-{id(self)}"
        self._auth: Any = None
        self._stopped = threading.Event()

    def _bind(self, sock: zmq.Socket, local: str, public: str) -> None:
        prepare_endpoint(local)
        remove_stale_ipc(local)
        sock.bind(local)
        if public:
            # libzmq snapshots security options per bind: the local endpoint stays
            # plain, the public one becomes a CurveZMQ server.
            if self.bus.curve.enabled:
                _apply_curve_server(sock, self.bus)
            sock.bind(public)

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        bus = self.bus
        if bus.curve.enabled and (bus.public or bus.public_output):
            self._start_auth()
        xsub = self.ctx.socket(zmq.XSUB)
        xpub = self.ctx.socket(zmq.XPUB)
        control = self.ctx.socket(zmq.PAIR)
        for s in (xsub, xpub, control):
            s.linger = 0
        xsub.rcvhwm = bus.hwm * 10
        xpub.sndhwm = bus.hwm * 10
        xsub.maxmsgsize = max_message_bytes(bus)
        try:
            self._bind(xsub, bus.input, bus.public)
            self._bind(xpub, bus.output, bus.public_output)
            control.bind(self._control_endpoint)
            log.info("bus up: input %s output %s%s", bus.input, bus.output,
                     f" public {bus.public}" if bus.public else "")
            if on_ready is not None:
                on_ready()
            zmq.proxy_steerable(xsub, xpub, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for s in (xsub, xpub, control):
                s.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self._stopped.set()

    def _start_auth(self) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        if not self.bus.curve.authorized:
            raise ConfigError("bus.curve.authorized: a directory of allowed client public keys is required")
        auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("streamfuse.auth"))
        auth.start()
        auth.configure_curve(domain="*", location=self.bus.curve.authorized)
        self._auth = auth

    def stop(self) -> None:
        """Ask the proxy to return (safe from another thread)."""
        sock = self.ctx.socket(zmq.PAIR)
        sock.linger = 0
        try:
            sock.connect(self._control_endpoint)
            sock.send(b"TERMINATE")
        finally:
            sock.close()
        self._stopped.wait(5)


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
