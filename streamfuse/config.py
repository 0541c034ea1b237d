"""Configuration: the only reader of TOML files and ``STREAMFUSE_*`` variables.

The file is validated into frozen dataclasses once, at start, and passed
explicitly. Every error names its key (``bus.input: expected a ZeroMQ endpoint,
got 'foo'``); the CLI turns :class:`ConfigError` into one line and exit code 2.
The keys are a public contract: config/streamfuse.toml documents every one
(a unit test keeps the file and these dataclasses in step).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamfuse.wire import topics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/streamfuse/streamfuse.toml")
ENV_PREFIX = "STREAMFUSE_"
ENDPOINT_RE = re.compile(r"^(ipc://.+|inproc://.+|tcp://(\*|\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5})$")


class ConfigError(ValueError):
    """A bad configuration value; ``str()`` is the one line shown to the user."""


Check = Callable[[Any], "str | None"]


def _endpoint(v: Any) -> str | None:
    return None if ENDPOINT_RE.match(v) else f"expected a ZeroMQ endpoint, got {v!r}"


def _optional_endpoint(v: Any) -> str | None:
    return None if v == "" else _endpoint(v)


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"expected a positive number, got {v!r}"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"expected a number >= 0, got {v!r}"


def _name(v: Any) -> str | None:
    return topics.name_problem(v)


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"expected one of {', '.join(map(repr, choices))}, got {v!r}"

    return check


def _streams(v: Any) -> str | None:
    bad = [s for s in v if s not in ("video", "audio", "text")]
    return f"unknown stream {bad[0]!r} (expected video, audio, text)" if bad else None


def device_problem(v: Any) -> str | None:
    if v == "auto" or v == "cpu" or re.match(r"^cuda(:\d+)?$", v):
        return None
    return f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}"


def _text_input(v: Any) -> str | None:
    if v in ("zmq", "stdin") or re.match(r"^(fifo|file):.+$", v):
        return None
    return f"expected 'zmq', 'stdin', 'fifo:PATH' or 'file:PATH', got {v!r}"


def _listen(v: Any) -> str | None:
    if v == "" or re.match(r"^[A-Za-z0-9_.:\[\]-]*:\d{1,5}$", v):
        return None
    return f"expected HOST:PORT (or '' to disable), got {v!r}"


def _check(check: Check, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata={"check": check}, **kw)
    return field(default=default, metadata={"check": check}, **kw)


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class CurveConfig:
    """CurveZMQ keys (``streamfuse keys generate DIR`` writes them).

    On the broker: ``server_secret`` plus ``authorized`` (a directory of client
    public keys). On a remote client: ``client_secret`` plus ``server_public``.
    """

    enabled: bool = False
    server_secret: str = ""
    server_public: str = ""
    client_secret: str = ""
    authorized: str = ""


@dataclass(frozen=True)
class BusConfig:
    input: str = _check(_endpoint, "ipc:///run/streamfuse/in")
    output: str = _check(_endpoint, "ipc:///run/streamfuse/out")
    public: str = ""  # extra TCP input endpoint for remote captures ("" = none)
    public_output: str = ""  # extra TCP output endpoint for remote subscribers
    # classifications, never media; "" = ipc://<dir of bus.input>/results
    results: str = _check(_optional_endpoint, "")
    public_results: str = ""  # the same for remote subscribers (TCP)
    max_message_mb: float = _check(_positive, 64.0)
    hwm: int = _check(_positive, 1000)
    curve: CurveConfig = field(default_factory=CurveConfig)

    def __post_init__(self) -> None:
        if not self.results:  # every reader sees the endpoint in use, never ""
            object.__setattr__(self, "results", default_results_endpoint(self.input))


@dataclass(frozen=True)
class VideoConfig:
    device: str = "0"
    width: int = _check(_positive, 640)
    height: int = _check(_positive, 480)
    fps: float = _check(_positive, 30.0)
    encoding: str = _check(_one_of("raw", "jpeg"), "raw")
    jpeg_quality: int = _check(_positive, 90)
    loop: bool = False  # restart a video file at its end instead of reconnecting
    reconnect_max_s: float = _check(_positive, 10.0)


@dataclass(frozen=True)
class AudioConfig:
    device: str = "default"
    samplerate: int = _check(_positive, 16000)
    channels: int = _check(_positive, 1)
    block_ms: float = _check(_positive, 20.0)


@dataclass(frozen=True)
class TextConfig:
    input: str = _check(_text_input, "zmq")
    endpoint: str = ""  # where the 'zmq' input binds ("" = ipc next to bus.input)
    max_bytes: int = _check(_positive, 4096)
    heartbeat_ms: float = _check(_positive, 100.0)


@dataclass(frozen=True)
class SourceConfig:
    name: str = _check(_name)
    video: VideoConfig | None = None
    audio: AudioConfig | None = None
    text: TextConfig | None = None

    def streams(self) -> list[str]:
        return [s for s in ("video", "audio", "text") if getattr(self, s) is not None]


@dataclass(frozen=True)
class AlignConfig:
    output: str = _check(_endpoint, "ipc:///run/streamfuse/windows")
    window_ms: int = _check(_positive, 1000)
    hop_ms: int = _check(_positive, 500)
    max_lateness_ms: int = _check(_non_negative, 250)
    frames_per_window: int = _check(_positive, 4)
    text_context_ms: int = _check(_non_negative, 5000)
    max_text_messages: int = _check(_positive, 8)
    required: list[str] = _check(_streams, default_factory=lambda: ["video", "audio"])
    dead_after_ms: int = _check(_positive, 2000)  # silent this long: stream is dead


@dataclass(frozen=True)
class FusionConfig:
    model: str = "/var/lib/streamfuse/model"
    device: str = _check(device_problem, "auto")
    max_batch: int = _check(_positive, 32)
    max_delay_ms: float = _check(_non_negative, 5.0)
    workers: int = _check(_positive, 1)
    reload_poll_s: float = _check(_positive, 2.0)
    threads: int = _check(_non_negative, 0)  # torch CPU threads per worker (0 = min(4, (cores - 1) // workers), at least 1)


@dataclass(frozen=True)
class RecordConfig:
    enabled: bool = False
    path: str = "/var/lib/streamfuse/recordings"
    max_size_mb: float = _check(_positive, 1024.0)
    max_duration_s: float = _check(_positive, 3600.0)
    topics: list[str] = field(default_factory=list)  # prefixes; empty = everything
    chunk_kb: int = _check(_positive, 4096)


@dataclass(frozen=True)
class FoxgloveConfig:
    """The Foxglove WebSocket bridge (docs/protocol.md, "Recordings" and README.md).

    ``listen`` "" = off. Foxglove's protocol has no authentication, so an address other
    than loopback needs ``allow_remote`` = true: anyone who reaches it sees every stream.
    ``max_fps``: frames per second per video topic sent to Foxglove (the rest is skipped).
    """

    listen: str = _check(_listen, "")
    allow_remote: bool = False
    max_fps: float = _check(_positive, 10.0)


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = _check(_listen, "127.0.0.1:9108")


@dataclass(frozen=True)
class Config:
    bus: BusConfig = field(default_factory=BusConfig)
    sources: list[SourceConfig] = field(default_factory=list)
    align: AlignConfig = field(default_factory=AlignConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    foxglove: FoxgloveConfig = field(default_factory=FoxgloveConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    path: str = ""  # the file this was loaded from ("" = defaults only)

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(f"sources: no source named {name!r} (configured: {known})")


# ----------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, int) and not isinstance(value, bool) and key.endswith("device"):
        return str(value)  # camera index or PortAudio device index written as a number
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not (cls is Config and f.name == "path")}
    for k in data:
        if k not in fields:
            where = f"{prefix}.{k}" if prefix else k
            raise ConfigError(f"{where}: unknown key")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing required key")
            continue
        value = _convert(data[name], hints[name], key)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{key}: {problem}")
        kwargs[name] = value
    return cls(**kwargs)


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Apply ``STREAMFUSE_<SECTION>_<KEY>`` (values parsed as TOML, else strings)."""
    sections = {f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("sources", "path")}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var == "STREAMFUSE_CONFIG":
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            continue
        if section == "bus" and key.startswith("curve_"):
            target = data.setdefault("bus", {}).setdefault("curve", {})
            key = key[len("curve_"):]
        else:
            target = data.setdefault(section, {})
        try:
            target[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            target[key] = raw


def parse(data: Mapping[str, Any], *, path: str = "", environ: Mapping[str, str] | None = None) -> Config:
    """Validate a TOML-shaped mapping into a :class:`Config`."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    _env_overrides(merged, os.environ if environ is None else environ)
    cfg = _build(Config, merged, "")
    names = [s.name for s in cfg.sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"sources: duplicate source name {sorted(dup)[0]!r}")
    if cfg.align.hop_ms > cfg.align.window_ms:
        raise ConfigError(
            f"align.hop_ms: must not exceed align.window_ms ({cfg.align.hop_ms} > {cfg.align.window_ms})"
        )
    for ep_key in ("public", "public_output", "public_results"):
        ep = getattr(cfg.bus, ep_key)
        if ep and not ep.startswith("tcp://"):
            raise ConfigError(f"bus.{ep_key}: expected a tcp:// endpoint, got {ep!r}")
    _check_distinct_endpoints(cfg)
    fox = cfg.foxglove
    if fox.listen and not is_loopback_listen(fox.listen) and not fox.allow_remote:
        raise ConfigError(f"foxglove.listen: {fox.listen} is not a loopback address and the "
                          f"Foxglove protocol has no authentication: set foxglove.allow_remote = "
                          f"true to serve it")
    return dataclasses.replace(cfg, path=path)


def _check_distinct_endpoints(cfg: Config) -> None:
    """Two sockets cannot bind one endpoint; for ipc the second bind would first remove
    the first one's socket file, silently cutting off everything connected to it."""
    keys = ("input", "output", "public", "public_output", "results", "public_results")
    seen: dict[str, str] = {}
    bound = [(f"bus.{k}", getattr(cfg.bus, k)) for k in keys] + [("align.output", cfg.align.output)]
    for key, ep in bound:
        if ep and ep in seen:
            raise ConfigError(f"{key}: {ep} is already {seen[ep]}")
        seen.setdefault(ep, key)


def default_results_endpoint(bus_input: str) -> str:
    """``bus.results`` when not set: beside an ipc ``bus.input``, else in the temp directory."""
    p = ipc_path(bus_input)
    directory = p.parent if p is not None else Path(tempfile.gettempdir()) / "streamfuse"
    return f"ipc://{directory}/results"


def load(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load a config file; ``None`` means ``$STREAMFUSE_CONFIG`` or the system file if present."""
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get("STREAMFUSE_CONFIG") or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    if path is None:
        return parse({}, environ=env)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config is not UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    return parse(data, path=str(p), environ=env)


def ipc_path(endpoint: str) -> Path | None:
    """The filesystem path of an ``ipc://`` endpoint, else None."""
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def is_loopback_listen(listen: str) -> bool:
    """True for a ``HOST:PORT`` whose host is loopback (``127.x``, ``::1``, ``localhost``)."""
    host = listen.rpartition(":")[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and loopback TCP (no encryption required)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = re.match(r"^tcp://(\[?)([^\]]+?)(\]?):\d+$", endpoint)
    if not m:
        return False
    host = m.group(2)
    return host == "localhost" or host.startswith("127.") or host == "::1"
