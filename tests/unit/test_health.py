"""The supervisor's pure rules: restart backoff, giving up, pipeline stalls (fake clock)."""

from __future__ import annotations

from streamfuse.clock import NS_PER_S as S
from streamfuse.service.health import Liveness, RestartPolicy


def test_backoff_doubles_then_gives_up_within_the_window() -> None:
    p = RestartPolicy(base_s=0.25, max_s=1.0, max_crashes=5, window_s=60)
    assert [p.on_crash(i * S) for i in range(4)] == [0.25, 0.5, 1.0, 1.0]
    assert p.on_crash(4 * S) is None


def test_old_crashes_are_forgotten() -> None:
    p = RestartPolicy(base_s=0.25, max_crashes=3, window_s=10)
    assert p.on_crash(0) == 0.25
    assert p.on_crash(1 * S) == 0.5
    assert p.on_crash(100 * S) == 0.25  # the first two fell out of the window


def test_stall_needs_inputs_without_outputs() -> None:
    live = Liveness(stall_s=5, quiet_s=2)
    assert live.stalled(0) is None  # nothing flows: nothing to judge
    for t in range(0, 10):
        live.on_input(t * S)
        if t < 3:
            live.on_output(t * S)
    assert live.stalled(7 * S) is None  # 4 s since the last classification
    assert "no classification for 6.5 s" in (live.stalled(int(8.5 * S)) or "")
    assert live.stalled(int(8.5 * S), expect_output=False) is None  # a model-less worker


def test_inputs_resuming_after_a_quiet_spell_get_a_fresh_grace() -> None:
    live = Liveness(stall_s=5, quiet_s=2)
    live.on_input(0)
    live.on_output(0)
    live.on_input(100 * S)  # inputs resume long after the last classification
    assert live.stalled(101 * S) is None
    for t in range(101, 107):
        live.on_input(t * S)
    assert live.stalled(106 * S) is not None


def test_heartbeats_alone_demand_no_classification() -> None:
    """An idle text-only source: heartbeats every 100 ms, nobody types, nothing to classify."""
    live = Liveness(stall_s=5, quiet_s=2)
    for t in range(0, 300):
        live.on_input(t * S // 10, data=False)
        assert live.stalled(t * S // 10) is None
    assert live.last_input_ns == 299 * S // 10  # the source is seen up all along


def test_data_after_heartbeats_demands_classifications() -> None:
    live = Liveness(stall_s=5, quiet_s=2)
    for t in range(0, 100):
        live.on_input(t * S // 10, data=False)
    for t in range(100, 170):
        live.on_input(t * S // 10, data=t % 10 == 0)  # a text typed each second, heartbeats between
    assert live.stalled(int(14.9 * S)) is None  # the grace counts from the first text (10 s)
    assert "no classification for 6.9 s" in (live.stalled(int(16.9 * S)) or "")
    live.on_output(int(16.9 * S))
    assert live.stalled(17 * S) is None
