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
         "bus.results: ipc:///run/streamfuse/out is already bus.output"),
        ({"bus": {"public_output": "tcp://127.0.0.1:5561",
                  "public_results": "tcp://127.0.0.1:5561"}},
         "bus.public_results: tcp://127.0.0.1:5561 is already bus.public_output"),
    ],
)
def test_bad_values_name_their_key(data: dict, message: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(data, environ={})
    assert str(e.value).startswith(message)


def test_results_endpoint_defaults_beside_bus_input() -> None:
    assert config.parse({}, environ={}).bus.results == "ipc:///run/streamfuse/results"
    cfg = config.parse({"bus": {"input": "ipc:///tmp/sf/in"}}, environ={})
    assert cfg.bus.results == "ipc:///tmp/sf/results"
    cfg = config.parse({"bus": {"input": "ipc:///tmp/sf/in", "results": "tcp://127.0.0.1:5562"}},
                       environ={})
    assert cfg.bus.results == "tcp://127.0.0.1:5562"


def test_public_results_off_loopback_needs_curve() -> None:
    from streamfuse.service.broker import check_security

    cfg = config.parse({"bus": {"public_results": "tcp://0.0.0.0:5562"}}, environ={})
    with pytest.raises(config.ConfigError,
                       match=r"^bus.public_results: tcp://0.0.0.0:5562 is reachable"):
        check_security(cfg.bus)
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
