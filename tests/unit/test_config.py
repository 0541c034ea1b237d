"""Config: every documented key parses; each kind of bad value names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamfuse import config

DEFAULT = Path(__file__).resolve().parents[2] / "config" / "streamfuse.toml"


def test_documented_default_parses_every_key() -> None:
    cfg = config.load(DEFAULT, environ={})
    assert cfg.bus.input == "ipc:///run/streamfuse/in"
    assert cfg.sources[0].name == "room1"
    assert cfg.sources[0].video is not None and cfg.sources[0].video.fps == 30.0
    assert cfg.sources[0].audio is not None and cfg.sources[0].audio.block_ms == 20.0
    assert cfg.sources[0].text is not None and cfg.sources[0].text.input == "zmq"
    assert cfg.align.required == ["video", "audio"]
    assert cfg.fusion.max_batch == 32 and cfg.record.max_size_mb == 1024
    assert cfg.metrics.listen == "127.0.0.1:9108"


def test_documented_default_equals_built_in_defaults_except_sources() -> None:
    from dataclasses import replace

    cfg = config.load(DEFAULT, environ={})
    assert replace(cfg, sources=[], path="") == config.parse({}, environ={})


def test_missing_sections_take_defaults() -> None:
    cfg = config.parse({"sources": [{"name": "lab", "text": {}}]}, environ={})
    assert cfg.sources[0].streams() == ["text"]
    assert cfg.align.window_ms == 1000


def _parse_error(data: dict) -> str:
    """The message of the ConfigError that parsing ``data`` raises."""
    with pytest.raises(config.ConfigError) as e:
        config.parse(data, environ={})
    return str(e.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bus": {"input": "foo"}}, "bus.input: expected a ZeroMQ endpoint, got 'foo'"),
        ({"bus": {"hwm": "many"}}, "bus.hwm: expected an integer, got 'many'"),
        ({"bus": {"colour": 1}}, "bus.colour: unknown key"),
        ({"nonsense": {}}, "nonsense: unknown key"),
        ({"align": {"window_ms": -5}}, "align.window_ms: expected a positive number, got -5"),
        ({"align": {"required": ["smell"]}}, "align.required: unknown stream 'smell'"),
        ({"align": {"hop_ms": 2000}}, "align.hop_ms: must not exceed align.window_ms"),
        ({"fusion": {"device": "tpu"}}, "fusion.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
        ({"record": {"enabled": "yes"}}, "record.enabled: expected true or false, got 'yes'"),
        ({"sources": [{"name": "Room 1"}]}, "sources[0].name: expected a name matching [a-z0-9_-]+"),
        ({"sources": [{"name": "r" * 65}]},
         "sources[0].name: expected a name matching [a-z0-9_-]+ of at most 64 characters"),
        ({"sources": [{"name": "a"}, {"name": "a"}]}, "sources: duplicate source name 'a'"),
        ({"sources": [{"name": "class"}]}, "sources[0].name: 'class' is reserved"),
        ({"sources": [{"name": "shadow"}]}, "sources[0].name: 'shadow' is reserved"),
        ({"sources": [{"name": "a", "video": {"encoding": "png"}}]},
         "sources[0].video.encoding: expected one of 'raw', 'jpeg', got 'png'"),
        ({"sources": [{"name": "a", "text": {"input": "telepathy"}}]}, "sources[0].text.input:"),
        ({"sources": [{}]}, "sources[0].name: missing required key"),
        ({"metrics": {"listen": "nowhere"}}, "metrics.listen: expected HOST:PORT"),
        ({"bus": {"public": "ipc:///x"}}, "bus.public: expected a tcp:// endpoint"),
        ({"bus": {"results": "foo"}}, "bus.results: expected a ZeroMQ endpoint, got 'foo'"),
        ({"bus": {"public_results": "ipc:///x"}}, "bus.public_results: expected a tcp:// endpoint"),
        ({"bus": {"results": "ipc:///run/streamfuse/out"}},
         "bus.results: ipc:///run/streamfuse/out is also bus.output"),
        ({"bus": {"public_output": "tcp://127.0.0.1:5561",
                  "public_results": "tcp://127.0.0.1:5561"}},
         "bus.public_results: tcp://127.0.0.1:5561 is also bus.public_output"),
    ],
)
def test_bad_values_name_their_key(data: dict, message: str) -> None:
    err = _parse_error(data)
    assert err.startswith(message)


def test_results_endpoint_defaults_beside_bus_input() -> None:
    assert config.parse({}, environ={}).bus.results == "ipc:///run/streamfuse/results"
    cfg = config.parse({"bus": {"input": "ipc:///tmp/sf/in"}}, environ={})
    assert cfg.bus.results == "ipc:///tmp/sf/results"
    cfg = config.parse({"bus": {"input": "ipc:///tmp/sf/in", "results": "tcp://127.0.0.1:5562"}},
                       environ={})
    assert cfg.bus.results == "tcp://127.0.0.1:5562"


def test_public_results_off_loopback_needs_curve() -> None:
    from streamfuse.service.broker import check_security

    with pytest.raises(config.ConfigError,
                       match=r"^bus.public_results: tcp://0.0.0.0:5562 is reachable"):
        config.parse({"bus": {"public_results": "tcp://0.0.0.0:5562"}}, environ={})
    loopback = config.parse({"bus": {"public_results": "tcp://127.0.0.1:5562"}}, environ={})
    check_security(loopback.bus)  # loopback needs no keys


@pytest.mark.parametrize("listen", ["0.0.0.0:8765", "192.168.1.5:8765", "[::]:8765"])
def test_foxglove_off_loopback_needs_explicit_opt_in(listen: str) -> None:
    with pytest.raises(config.ConfigError, match=r"^foxglove.listen: .* is not a loopback address"):
        config.parse({"foxglove": {"listen": listen}}, environ={})
    opted_in = config.parse({"foxglove": {"listen": listen, "allow_remote": True}}, environ={})
    assert opted_in.foxglove.listen == listen
    for local in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert config.parse({"foxglove": {"listen": local}}, environ={}).foxglove.listen == local
    assert config.parse({}, environ={}).foxglove.listen == ""  # off by default


def test_cli_refuses_a_remote_foxglove_server_with_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[foxglove]\nlisten = "0.0.0.0:8765"\n')
    r = subprocess.run([sys.executable, "-m", "streamfuse", "run", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("streamfuse run: foxglove.listen: 0.0.0.0:8765 is not a loopback")
    assert len(r.stderr.strip().splitlines()) == 1


def test_env_overrides_single_keys() -> None:
    env = {"STREAMFUSE_FUSION_MAX_BATCH": "8", "STREAMFUSE_BUS_INPUT": "ipc:///tmp/x/in",
           "STREAMFUSE_FUSION_DEVICE": "cpu", "STREAMFUSE_BUS_CURVE_ENABLED": "true"}
    cfg = config.parse({"fusion": {"max_batch": 64}}, environ=env)
    assert cfg.fusion.max_batch == 8
    assert cfg.bus.input == "ipc:///tmp/x/in"
    assert cfg.fusion.device == "cpu"
    assert cfg.bus.curve.enabled is True


def test_env_override_is_validated() -> None:
    with pytest.raises(config.ConfigError, match="fusion.max_batch: expected a positive number"):
        config.parse({}, environ={"STREAMFUSE_FUSION_MAX_BATCH": "0"})


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[bus\n")
    with pytest.raises(config.ConfigError, match="invalid TOML"):
        config.load(p, environ={})


@pytest.mark.parametrize("endpoint, local", [
    ("ipc:///x", True), ("tcp://127.0.0.1:5", True), ("tcp://localhost:5", True), ("tcp://[::1]:5", True),
    ("tcp://0.0.0.0:5", False), ("tcp://10.1.2.3:5", False), ("tcp://*:5", False),
])
def test_local_endpoints(endpoint: str, local: bool) -> None:
    assert config.is_local_endpoint(endpoint) is local


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[bus]\ninput = "foo"\n')
    r = subprocess.run([sys.executable, "-m", "streamfuse", "broker", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "streamfuse broker: bus.input: expected a ZeroMQ endpoint, got 'foo'"


def _code_keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted key the config dataclasses accept (``sources.video.fps``)."""
    import dataclasses
    import types
    import typing

    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if cls is config.Config and f.name == "path":
            continue  # where the file came from, not a key
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            tp = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(tp):
            keys |= _code_keys(tp, f"{key}.")
        else:
            keys.add(key)
    return keys


def _file_keys(data: dict, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in data.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            v = v[0]
        if isinstance(v, dict):
            keys |= _file_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def test_the_documented_file_has_every_key_of_the_code_and_no_other() -> None:
    """config/streamfuse.toml is the configuration reference: a key added to the code
    must be documented there, and a key documented there must exist."""
    import tomllib

    in_code = _code_keys(config.Config)
    in_file = _file_keys(tomllib.loads(DEFAULT.read_text(encoding="utf-8")))
    assert {"bus.curve.enabled", "sources.video.fps", "bus.results"} <= in_code
    assert sorted(in_code - in_file) == [], "keys of streamfuse/config.py missing in the file"
    assert sorted(in_file - in_code) == [], "keys in the file that the code does not know"


# ----------------------------------------------------------------------------- ranges and relations

_TEXT = {"name": "lab", "text": {"endpoint": "tcp://0.0.0.0:5599"}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"metrics": {"listen": "127.0.0.1:99999"}},
         "metrics.listen: port 99999 is not in 1..65535"),
        ({"metrics": {"listen": "127.0.0.1:0"}}, "metrics.listen: port 0 is not in 1..65535"),
        ({"bus": {"input": "tcp://127.0.0.1:70000"}}, "bus.input: port 70000 is not in 1..65535"),
        ({"bus": {"hwm": 10_000_000_000}}, "bus.hwm: expected at most 1e+07, got 10000000000"),
        ({"bus": {"max_message_mb": 1e30}}, "bus.max_message_mb: expected at most 4096, got 1e+30"),
        ({"bus": {"max_message_mb": float("nan")}},
         "bus.max_message_mb: expected a positive number"),
        ({"bus": {"max_message_mb": float("inf")}}, "bus.max_message_mb: expected at most 4096"),
        ({"record": {"chunk_kb": 10**9}}, "record.chunk_kb: expected at most"),
        ({"sources": [{"name": "a", "text": {"max_bytes": 2**40}}]},
         "sources[0].text.max_bytes: expected at most"),
        ({"bus": {"max_message_mb": 1},
          "sources": [{"name": "a", "text": {"max_bytes": 2 * 2**20}}]},
         "sources[0].text.max_bytes: 2097152 exceeds bus.max_message_mb (1 MB)"),
        ({"sources": [{"name": "a", "text": {"endpoint": "nowhere"}}]},
         "sources[0].text.endpoint: expected a ZeroMQ endpoint, got 'nowhere'"),
    ],
)
def test_out_of_range_values_name_their_key(data: dict, message: str) -> None:
    err = _parse_error(data)
    assert err.startswith(message), err


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"align": {"output": "ipc:///run/streamfuse/in"}},
         "align.output: ipc:///run/streamfuse/in is also bus.input"),
        ({"bus": {"output": "ipc:///run/streamfuse/./in"}},
         "bus.output: ipc:///run/streamfuse/./in is also"),
        ({"bus": {"public": "tcp://127.0.0.1:5560", "public_output": "tcp://localhost:5560"}},
         "bus.public_output: tcp://localhost:5560 is also bus.public"),
        ({"bus": {"input": "tcp://*:5560", "output": "tcp://127.0.0.1:5560"}},
         "bus.output: tcp://127.0.0.1:5560 is also bus.input"),
        ({"sources": [{"name": "a", "text": {"endpoint": "ipc:///run/streamfuse/windows"}}]},
         "sources[0].text.endpoint: ipc:///run/streamfuse/windows is also align.output"),
        ({"sources": [{"name": "a", "text": {"endpoint": "tcp://127.0.0.1:5599"}},
                      {"name": "b", "text": {"endpoint": "tcp://127.0.0.1:5599"}}]},
         "sources[1].text.endpoint: tcp://127.0.0.1:5599 is also sources[0].text.endpoint"),
        ({"bus": {"public": "tcp://127.0.0.1:9108"}},
         "metrics.listen: 127.0.0.1:9108 is also bus.public"),
    ],
)
def test_endpoints_that_must_differ(data: dict, message: str) -> None:
    err = _parse_error(data)
    assert err.startswith(message), err


def test_default_text_endpoints_do_not_collide() -> None:
    two = [{"name": "a", "text": {}}, {"name": "b", "text": {}}]
    cfg = config.parse({"sources": two}, environ={})
    eps = [ep for _, ep in config.binding_endpoints(cfg)]
    assert "ipc:///run/streamfuse/text-a" in eps and len(set(eps)) == len(eps)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sources": [_TEXT]},
         "sources[0].text.endpoint: tcp://0.0.0.0:5599 is reachable from the network"),
        ({"sources": [{**_TEXT, "text": {"endpoint": "tcp://*:5599"}}]},
         "sources[0].text.endpoint: tcp://*:5599 is reachable from the network"),
        ({"bus": {"curve": {"enabled": True}}, "sources": [_TEXT]},
         "sources[0].text.endpoint: tcp://0.0.0.0:5599 is reachable"),
        ({"metrics": {"listen": "0.0.0.0:9108"}},
         "metrics.listen: 0.0.0.0:9108 is reachable from the network and metrics have no "
         "authentication; use a loopback address or set metrics.allow_remote = true"),
        ({"metrics": {"listen": "[::]:9108"}}, "metrics.listen: [::]:9108 is reachable"),
        ({"align": {"output": "tcp://0.0.0.0:5570"}},
         "align.output: tcp://0.0.0.0:5570 is reachable from the network"),
    ],
)
def test_network_rule_at_load(data: dict, message: str) -> None:
    err = _parse_error(data)
    assert err.startswith(message), err


def test_network_rule_opt_ins() -> None:
    cfg = config.parse({"metrics": {"listen": "0.0.0.0:9108", "allow_remote": True}}, environ={})
    assert cfg.metrics.allow_remote
    for listen in ("127.0.0.1:9108", "localhost:9108", "[::1]:9108", ":9108"):
        config.parse({"metrics": {"listen": listen}}, environ={})
    curve = {"enabled": True, "server_secret": "/k/server.key_secret", "authorized": "/k/ok"}
    cfg = config.parse({"bus": {"curve": curve}, "sources": [_TEXT]}, environ={})
    assert cfg.sources[0].text is not None and cfg.sources[0].text.endpoint == "tcp://0.0.0.0:5599"


def test_cli_out_of_range_exits_2_without_traceback(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[bus]\nhwm = 10000000000\n")
    r = subprocess.run([sys.executable, "-m", "streamfuse", "broker", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "streamfuse broker: bus.hwm: expected at most 1e+07, got 10000000000"


def test_unreadable_and_non_utf8_files_are_one_line_errors(tmp_path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"x = '\xe9'\n")
    with pytest.raises(config.ConfigError, match=r"latin1\.toml: config is not UTF-8$"):
        config.load(bad, environ={})
    with pytest.raises(config.ConfigError, match=r"missing\.toml: cannot read config: No such file"):
        config.load(tmp_path / "missing.toml", environ={})
    with pytest.raises(ValueError, match=r"latin1\.toml: not UTF-8$"):
        config.read_text(bad, ValueError)
