"""The node runtime (streamfuse/node.py) on real sockets: what it opened it closes, what a
test passes in it leaves alone, and a socket that cannot be opened is an exit 1 that names
the endpoint."""

from __future__ import annotations

import logging
import threading

import pytest
import zmq

from streamfuse.align import node as align_node
from streamfuse.config import parse
from streamfuse.node import EXIT_CANNOT_OPEN, Every, Runtime, polling


def _pair(ctx: zmq.Context, endpoint: str) -> tuple[zmq.Socket, zmq.Socket]:
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.bind(endpoint)
    pull.connect(endpoint)
    return push, pull


def test_opened_sockets_and_the_own_context_are_closed_on_exit(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/rt.sock"
    with Runtime() as rt:
        push = rt.open(None, lambda c: c.socket(zmq.PUSH), linger=500)
        push.bind(endpoint)
        pull = rt.open(None, lambda c: c.socket(zmq.PULL))
        pull.connect(endpoint)
        push.send(b"x")
        assert pull.recv() == b"x"
        ctx = rt.ctx
    assert push.closed and pull.closed and ctx.closed


def test_sockets_and_a_context_passed_in_are_not_closed() -> None:
    ctx = zmq.Context()
    try:
        push, pull = _pair(ctx, "inproc://given")
        made: list[zmq.Socket] = []

        def make(c: zmq.Context) -> zmq.Socket:
            made.append(c.socket(zmq.PUB))
            return made[-1]

        with Runtime(ctx) as rt:
            assert rt.open(push, make, linger=500) is push
            assert rt.ctx is ctx
            own = rt.open(None, make)
        assert len(made) == 1 and own.closed  # only the one it made, closed
        assert not push.closed and not pull.closed and not ctx.closed
        push.send(b"still open")
        assert pull.recv() == b"still open"
    finally:
        ctx.destroy(linger=0)


def test_a_failed_open_closes_what_was_opened_and_raises() -> None:
    rt = Runtime()
    first = rt.open(None, lambda c: c.socket(zmq.PUSH), linger=500)
    first.bind("inproc://first")

    def clash(c: zmq.Context) -> zmq.Socket:
        s = c.socket(zmq.PUSH)  # left open by a careless helper: the context still goes
        s.bind("inproc://first")
        return s

    ctx = rt.ctx
    with pytest.raises(zmq.ZMQError):
        rt.open(None, clash)
    assert first.closed and ctx.closed
    rt.close()  # nothing left to close: no error, no hang


def test_aligner_exits_1_naming_the_endpoint_when_its_bind_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    ctx = zmq.Context()
    taken = ctx.socket(zmq.PULL)
    taken.linger = 0
    taken.bind("tcp://127.0.0.1:*")
    endpoint = taken.getsockopt_string(zmq.LAST_ENDPOINT)
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    try:
        cfg = parse({"align": {"output": endpoint}}, environ={})
        with caplog.at_level(logging.ERROR, logger="streamfuse.align"):
            rc = align_node.main(cfg, sub=sub, stop=threading.Event())
        assert rc == EXIT_CANNOT_OPEN == 1
        assert endpoint in caplog.text and "cannot open" in caplog.text
        assert not sub.closed  # passed in: the caller's to close
    finally:
        sub.close()
        taken.close()
        ctx.term()


def test_polling_says_whether_input_waits_until_stop() -> None:
    ctx = zmq.Context()
    push, pull = _pair(ctx, "inproc://poll")
    stop = threading.Event()
    seen = []
    try:
        for readable in polling(pull, 1, stop):
            seen.append(readable)
            if readable:
                pull.recv()
                stop.set()
            elif len(seen) == 2:
                push.send(b"x")
        assert seen == [False, False, True]
    finally:
        for s in (push, pull):
            s.close(linger=0)
        ctx.term()


def test_every_is_due_once_per_period() -> None:
    e = Every(10, start_ns=100)
    assert [e.due(t) for t in (105, 110, 115, 119, 120, 200)] == [False, True, False, False,
                                                                  True, True]
