"""Bad configurations given to a real ``streamfuse run``: exit 2, one line naming the key,
no traceback, and nothing started (the bus sockets are never bound)."""

from __future__ import annotations

import pytest

from tests.helpers.faults import last_line, refused

CASES = [
    ('[metrics]\nlisten = "127.0.0.1:99999"\n', "metrics.listen: port 99999 is not in 1..65535"),
    ("[bus]\nhwm = 10000000000\n", "bus.hwm: expected at most 1e+07, got 10000000000"),
    ("[bus]\nhwm = 1e10\n", "bus.hwm: expected an integer"),
    ("[bus]\nmax_message_mb = 1e30\n", "bus.max_message_mb: expected at most 4096, got 1e+30"),
    ('[bus]\npublic = "tcp://127.0.0.1:70000"\n', "bus.public: port 70000 is not in 1..65535"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "line"), CASES)
def test_out_of_range_values_exit_2_naming_the_key(bus_env, extra: str, line: str) -> None:
    r = refused(bus_env, extra)
    assert r.returncode == 2, r.stderr
    assert last_line(r.stderr).startswith(f"streamfuse run: {line}"), r.stderr
    assert "Traceback" not in r.stderr and "could not start" not in r.stderr
    assert not (bus_env.run_dir / "in").exists()


@pytest.mark.slow
def test_align_output_equal_to_bus_input_exits_2(bus_env) -> None:
    r = refused(bus_env, f'[align]\noutput = "ipc://{bus_env.run_dir}/in"\n')
    assert r.returncode == 2, r.stderr
    assert last_line(r.stderr) == (
        f"streamfuse run: align.output: ipc://{bus_env.run_dir}/in is also bus.input; "
        "every endpoint the daemon binds must differ")
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_text_endpoint_equal_to_bus_output_exits_2(bus_env) -> None:
    r = refused(bus_env, '[[sources]]\nname = "room1"\n[sources.text]\n'
                         f'endpoint = "ipc://{bus_env.run_dir}/out"\n')
    assert r.returncode == 2, r.stderr
    assert last_line(r.stderr).startswith(
        f"streamfuse run: sources[0].text.endpoint: ipc://{bus_env.run_dir}/out is also bus.output")
