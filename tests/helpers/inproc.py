"""The aligner node's sockets in one process: a bus publisher and the node's SUB on
``inproc://bus``, the node's PUSH and a test's PULL on ``inproc://windows``."""

from __future__ import annotations

import zmq

from streamfuse.align import node
from streamfuse.config import Config


def align_sockets(cfg: Config, *, pub_type: int = zmq.PUB, lossless: bool = False
                  ) -> tuple[zmq.Context, zmq.Socket, zmq.Socket, zmq.Socket, zmq.Socket]:
    """``(ctx, pub, sub, push, pull)``, connected, ``sub`` subscribed to what the node
    subscribes to under ``cfg``. ``lossless``: no high-water marks (nothing dropped on the
    way). The caller closes the sockets and terminates ``ctx``."""
    ctx = zmq.Context()
    pub, sub = ctx.socket(pub_type), ctx.socket(zmq.SUB)
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (pub, sub, push, pull):
        s.linger = 0
        if lossless:
            s.sndhwm = s.rcvhwm = 0
    pub.bind("inproc://bus")
    sub.connect("inproc://bus")
    for p in node.subscriptions(cfg):
        sub.setsockopt(zmq.SUBSCRIBE, p.encode())
    push.bind("inproc://windows")
    pull.connect("inproc://windows")
    return ctx, pub, sub, push, pull
