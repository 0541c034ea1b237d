"""The broker's TCP output for remote subscribers when the frame plane is on.

A remote subscriber cannot map this host's shared memory, so what it receives
must carry pixels: this thread reads the bus output through an XSUB (passing its
peers' subscriptions upstream, so only what someone subscribed to crosses), turns
every frame by reference into an inline frame (:class:`~streamfuse.frameplane.inline.Inliner`)
and sends it on an XPUB bound to ``bus.public_output``. Everything else passes
byte for byte. With ``frame_plane = "inline"`` the broker binds ``public_output``
on its main XPUB instead and this thread does not run.
"""

from __future__ import annotations

import logging
import threading

import zmq

from streamfuse.frameplane.inline import Inliner
from streamfuse.wire.sockets import send_parts

log = logging.getLogger("streamfuse.broker")

POLL_MS = 100


class PublicOutput:
    """XSUB (connected to the broker's inner output) -> inline frames -> XPUB.

    The sockets are made in the caller's thread (the XPUB already bound by the
    broker, with its security options) and handed to the thread by :meth:`start`.
    """

    def __init__(self, ctx: zmq.Context, inner_output: str, xpub: zmq.Socket, *, hwm: int,
                 max_bytes: int) -> None:
        self.xsub = ctx.socket(zmq.XSUB)
        self.xsub.linger = 0
        self.xsub.rcvhwm = hwm
        self.xsub.connect(inner_output)
        self.xpub = xpub
        self.inliner = Inliner(max_bytes=max_bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-public", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.xsub, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(POLL_MS):
                    if sock is self.xpub:
                        self.xsub.send(self.xpub.recv(copy=False), copy=False)  # (un)subscription
                    else:
                        self._forward()
        except zmq.ContextTerminated:
            pass
        finally:
            if self.inliner.overwritten:
                log.warning("public output: %d frames were overwritten before they could be sent",
                            self.inliner.overwritten)
            for s in (self.xsub, self.xpub):
                s.close(linger=0)
            self.inliner.close()

    def _forward(self) -> None:
        for _ in range(256):
            try:
                parts = self.xsub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            out = self.inliner.parts(parts)
            if out is None:
                continue
            try:
                send_parts(self.xpub, out, zmq.NOBLOCK)
            except zmq.Again:
                pass  # XPUB drops for a slow peer by itself; NOBLOCK only guards the call

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5)
        else:
            for s in (self.xsub, self.xpub):
                s.close(linger=0)
            self.inliner.close()
