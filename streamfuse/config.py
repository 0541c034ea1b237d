"""Configuration: the only reader of TOML files and ``STREAMFUSE_*`` variables.

The file is validated into frozen dataclasses once, at start, and passed
explicitly. Every error names its key (``bus.input: expected a ZeroMQ endpoint,
got 'foo'``); the CLI turns :class:`ConfigError` into one line and exit code 2.
The keys are a public contract: config/streamfuse.toml documents every one
(a unit test keeps the file and these dataclasses in step).
"""

from __future__ import annotations

import dataclasses
import difflib
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
# STREAMFUSE_* variables that are not config overrides: the config file to read, the log
# level, and what the supervisor tells its children (their name, their readiness file).
OTHER_VARIABLES = ("STREAMFUSE_CONFIG", "STREAMFUSE_LOG", "STREAMFUSE_CHILD",
                   "STREAMFUSE_STATUS_FILE")
ENDPOINT_RE = re.compile(r"^(ipc://.+|inproc://.+|tcp://(\*|\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5})$")


class ConfigError(ValueError):
    """A bad configuration value; ``str()`` is the one line shown to the user."""


Check = Callable[[Any], "str | None"]


MAX_PORT = 65535
MAX_HWM = 10_000_000  # messages; the broker queues ten times this per socket
MAX_MESSAGE_MB = 4096.0  # one ZeroMQ message held whole in memory by every receiver
MAX_TEXT_BYTES = 16 * 1024 * 1024
MAX_CHUNK_KB = 1024 * 1024


def _port_problem(port: str) -> str | None:
    return None if 1 <= int(port) <= MAX_PORT else f"port {port} is not in 1..{MAX_PORT}"


def _port_in(v: str) -> str | None:
    """The problem with the port at the end of ``v`` (``...:PORT``), naming ``v``."""
    problem = _port_problem(v.rpartition(":")[2])
    return f"{problem} in {v!r}" if problem else None


def _endpoint(v: Any) -> str | None:
    if not ENDPOINT_RE.match(v):
        return f"expected a ZeroMQ endpoint, got {v!r}"
    return _port_in(v) if v.startswith("tcp://") else None


def _optional_endpoint(v: Any) -> str | None:
    return None if v == "" else _endpoint(v)


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"expected a positive number, got {v!r}"  # NaN fails too


def _positive_max(limit: float) -> Check:
    """Positive and at most ``limit`` (a value past it is a typo or an overflow, not a setting)."""

    def check(v: Any) -> str | None:
        return _positive(v) or (None if v <= limit else f"expected at most {limit:g}, got {v!r}")

    return check


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"expected a number >= 0, got {v!r}"


def _name(v: Any) -> str | None:
    return topics.name_problem(v)


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return (None if v in choices
                else f"expected one of {', '.join(map(repr, choices))}, got {v!r}")

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
    if v == "":
        return None
    if not re.match(r"^[A-Za-z0-9_.:\[\]-]*:\d+$", v):
        return f"expected HOST:PORT (or '' to disable), got {v!r}"
    return _port_in(v)


# fusion.promote_if: "" (off) or this sentence (streamfuse.fusion.shadow.PromoteRule).
PROMOTE_IF_RE = re.compile(r"^\s*accuracy on at least (\d+) labell?ed windows beats live by "
                           r"(\d+(?:\.\d+)?) points?\s*$")
PROMOTE_IF_FORM = "accuracy on at least N labelled windows beats live by P points"


def _promote_if(v: Any) -> str | None:
    if v == "" or PROMOTE_IF_RE.match(v):
        return None
    return f"expected {PROMOTE_IF_FORM!r} (e.g. N = 200, P = 1) or '', got {v!r}"


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
    public: str = _check(_optional_endpoint, "")  # extra TCP input for remote captures ("" = none)
    public_output: str = _check(_optional_endpoint, "")  # extra TCP output for remote subscribers
    # classifications, never media; "" = ipc://<dir of bus.input>/results
    results: str = _check(_optional_endpoint, "")
    public_results: str = _check(_optional_endpoint, "")  # the same for remote subscribers (TCP)
    max_message_mb: float = _check(_positive_max(MAX_MESSAGE_MB), 64.0)
    hwm: int = _check(_positive_max(MAX_HWM), 1000)
    # "shm": video frames go by reference between processes of this host (frame plane)
    frame_plane: str = _check(_one_of("shm", "inline"), "shm")
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
    endpoint: str = _check(_optional_endpoint, "")  # 'zmq' binds here ("" = next to bus.input)
    max_bytes: int = _check(_positive_max(MAX_TEXT_BYTES), 4096)
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
    # torch CPU threads per worker (0 = min(4, (cores - 1) // workers), at least 1)
    threads: int = _check(_non_negative, 0)
    shadow: str = ""  # candidate artifact judged beside the live one ("" = none)
    judge_period_s: float = _check(_positive, 600.0)  # sliding period of the shadow's figures
    promote_if: str = _check(_promote_if, "")  # automatic promotion ("" = only by hand)


@dataclass(frozen=True)
class RecordConfig:
    enabled: bool = False
    path: str = "/var/lib/streamfuse/recordings"
    max_size_mb: float = _check(_positive, 1024.0)
    max_duration_s: float = _check(_positive, 3600.0)
    topics: list[str] = field(default_factory=list)  # prefixes; empty = everything
    chunk_kb: int = _check(_positive_max(MAX_CHUNK_KB), 4096)
    # Retention of the daemon's recordings (the recorder writing into `path`; 0 = no limit):
    # each time a file starts, the oldest finished ones are removed until all of them, the
    # file being written counted at max_size_mb, total at most keep_mb, and none is older
    # than keep_days.
    keep_mb: float = _check(_non_negative, 0.0)
    keep_days: float = _check(_non_negative, 0.0)


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
    allow_remote: bool = False  # serve metrics on a non-loopback address (no authentication)


@dataclass(frozen=True)
class SupervisorConfig:
    """Retrying a child given up on (a capture, the recorder): its error may be gone."""

    retry_after_s: float = _check(_positive, 60.0)  # first retry; the wait doubles each time
    retry_max_s: float = _check(_positive, 600.0)


@dataclass(frozen=True)
class WebConfig:
    """The live web console (``streamfuse web``, a child of ``streamfuse run``)."""

    listen: str = _check(_listen, "127.0.0.1:8080")  # "" = off
    token: str = ""  # required off loopback: "Authorization: Bearer <token>" or ?token=
    max_fps: float = _check(_positive, 5.0)  # camera frames per second sent to each browser


@dataclass(frozen=True)
class Config:
    bus: BusConfig = field(default_factory=BusConfig)
    sources: list[SourceConfig] = field(default_factory=list)
    align: AlignConfig = field(default_factory=AlignConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    foxglove: FoxgloveConfig = field(default_factory=FoxgloveConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
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
    if (tp is str and isinstance(value, int) and not isinstance(value, bool)
            and key.endswith("device")):
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
    fields = {f.name: f for f in dataclasses.fields(cls)
              if not (cls is Config and f.name == "path")}
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


def _env_key(cls: Any, rest: str) -> tuple[str, ...] | None:
    """The key path (``("bus", "curve", "enabled")``) that the lower-case rest of a
    ``STREAMFUSE_`` variable names in the dataclass ``cls``, or None."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if rest.startswith(f.name + "_"):
                sub = _env_key(tp, rest[len(f.name) + 1:])
                if sub is not None:
                    return (f.name, *sub)
        elif rest == f.name and cls is not Config:
            return (f.name,)
    return None


def _env_names(cls: Any = None, prefix: str = ENV_PREFIX) -> list[str]:
    """Every ``STREAMFUSE_<SECTION>_<KEY>`` variable that names a key."""
    cls = Config if cls is None else cls
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _env_names(hints[f.name], f"{prefix}{f.name.upper()}_")
        elif cls is not Config:
            out.append(prefix + f.name.upper())
    return out


def _unknown_variable(var: str) -> ConfigError:
    close = difflib.get_close_matches(var, _env_names(), n=1)
    hint = f"did you mean {close[0]}?" if close else "overrides are STREAMFUSE_<SECTION>_<KEY>"
    return ConfigError(f"{var}: no such config key ({hint})")


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply ``STREAMFUSE_<SECTION>_<KEY>`` (values parsed as TOML, else strings) to
    ``data``; returns the dotted key each variable set, mapped to the variable. A
    ``STREAMFUSE_`` variable that names no key (a typo would otherwise be ignored
    silently) raises :class:`ConfigError` naming it."""
    origins: dict[str, str] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in OTHER_VARIABLES:
            continue
        path = _env_key(Config, var[len(ENV_PREFIX):].lower())
        if path is None:
            raise _unknown_variable(var)
        target = data
        for i, part in enumerate(path[:-1]):
            node = target.get(part, {})
            if not isinstance(node, Mapping):
                raise ConfigError(f"{'.'.join(path[:i + 1])}: expected a table, got {node!r}")
            target[part] = node = dict(node)  # a copy: the caller's mapping stays as it was
            target = node
        try:
            target[path[-1]] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            target[path[-1]] = raw
        origins[".".join(path)] = var
    return origins


def parse(data: Mapping[str, Any], *, path: str = "",
          environ: Mapping[str, str] | None = None) -> Config:
    """Validate a TOML-shaped mapping into a :class:`Config`."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v)
                              for k, v in data.items()}
    origins = _env_overrides(merged, os.environ if environ is None else environ)
    try:
        cfg = _build(Config, merged, "")
    except ConfigError as e:
        var = origins.get(str(e).partition(":")[0])
        raise ConfigError(f"{e} (from {var})" if var else str(e)) from None
    names = [s.name for s in cfg.sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"sources: duplicate source name {sorted(dup)[0]!r}")
    if cfg.align.hop_ms > cfg.align.window_ms:
        raise ConfigError(
            f"align.hop_ms: must not exceed align.window_ms "
            f"({cfg.align.hop_ms} > {cfg.align.window_ms})"
        )
    for ep_key in ("public", "public_output", "public_results"):
        ep = getattr(cfg.bus, ep_key)
        if ep and not ep.startswith("tcp://"):
            raise ConfigError(f"bus.{ep_key}: expected a tcp:// endpoint, got {ep!r}")
    _check_relations(cfg)
    rec = cfg.record
    if rec.keep_mb and rec.keep_mb < 2 * rec.max_size_mb:
        raise ConfigError(f"record.keep_mb: expected 0 or at least twice record.max_size_mb "
                          f"({2 * rec.max_size_mb:g}), so a finished file fits beside the one "
                          f"being written; got {rec.keep_mb:g}")
    if cfg.web.listen and not cfg.web.token and not is_local_listen(cfg.web.listen):
        raise ConfigError(f"web.token: required when web.listen ({cfg.web.listen}) is not a "
                          "loopback address")
    fox = cfg.foxglove
    if fox.listen and not is_local_listen(fox.listen) and not fox.allow_remote:
        raise ConfigError(f"foxglove.listen: {fox.listen} is not a loopback address and the "
                          f"Foxglove protocol has no authentication: set foxglove.allow_remote = "
                          f"true to serve it")
    return dataclasses.replace(cfg, path=path)


def text_endpoint(text: TextConfig, bus: BusConfig, source: str) -> str:
    """Where the ``zmq`` text input of ``source`` binds (and ``streamfuse send`` connects)."""
    if text.endpoint:
        return text.endpoint
    p = ipc_path(bus.input)
    directory = p.parent if p is not None else Path(tempfile.gettempdir()) / "streamfuse"
    return f"ipc://{directory}/text-{source}"


def binding_endpoints(cfg: Config) -> list[tuple[str, str]]:
    """(key, endpoint) of every socket the daemon binds, metrics' HTTP port as ``tcp://``."""
    eps = [("bus.input", cfg.bus.input), ("bus.output", cfg.bus.output),
           ("bus.public", cfg.bus.public), ("bus.public_output", cfg.bus.public_output),
           ("bus.results", cfg.bus.results), ("bus.public_results", cfg.bus.public_results),
           ("align.output", cfg.align.output)]
    for i, s in enumerate(cfg.sources):
        if s.text is not None and s.text.input == "zmq":
            eps.append((f"sources[{i}].text.endpoint", text_endpoint(s.text, cfg.bus, s.name)))
    if cfg.metrics.listen:
        eps.append(("metrics.listen", f"tcp://{cfg.metrics.listen}"))
    if cfg.web.listen:
        eps.append(("web.listen", f"tcp://{cfg.web.listen}"))
    if cfg.foxglove.listen:
        eps.append(("foxglove.listen", f"tcp://{cfg.foxglove.listen}"))
    return [(k, e) for k, e in eps if e]


_ANY_HOST = ("*", "0.0.0.0", "::", "[::]", "")


def _same_address(a: str, b: str) -> bool:
    """Would binding ``a`` and ``b`` collide? (tcp: same port on the same or a wildcard host)."""
    if a.startswith("tcp://") and b.startswith("tcp://"):
        host_a, _, port_a = a[len("tcp://"):].rpartition(":")
        host_b, _, port_b = b[len("tcp://"):].rpartition(":")
        alias = {"localhost": "127.0.0.1"}
        host_a, host_b = alias.get(host_a, host_a), alias.get(host_b, host_b)
        return port_a == port_b and (host_a == host_b or host_a in _ANY_HOST or host_b in _ANY_HOST)
    pa, pb = ipc_path(a), ipc_path(b)
    if pa is not None and pb is not None:
        return os.path.normpath(pa) == os.path.normpath(pb)
    return a == b


def _is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _check_relations(cfg: Config) -> None:
    """Rules between keys: distinct endpoints, the network rule, sizes that fit each other."""
    seen: list[tuple[str, str]] = []
    for key, ep in binding_endpoints(cfg):
        for other_key, other in seen:
            if _same_address(ep, other):
                shown = ep.removeprefix("tcp://") if key.endswith(".listen") else ep
                raise ConfigError(f"{key}: {shown} is also {other_key}; "
                                  "every endpoint the daemon binds must differ")
        seen.append((key, ep))
    server_keys = cfg.bus.curve.enabled and bool(cfg.bus.curve.server_secret)
    for key, ep in binding_endpoints(cfg):
        if key.startswith("bus.public") or key.endswith("text.endpoint"):
            if not is_local_endpoint(ep) and not server_keys:
                raise ConfigError(
                    f"{key}: {ep} is reachable from the network; set [bus.curve] enabled, "
                    "server_secret and authorized (streamfuse keys generate DIR) "
                    "or use a loopback address")
    if not is_local_endpoint(cfg.align.output):
        raise ConfigError(f"align.output: {cfg.align.output} is reachable from the network; "
                          "windows carry the sensors' data and this socket has no CurveZMQ: "
                          "use ipc:// or a loopback address")
    host = cfg.metrics.listen.rpartition(":")[0]
    if cfg.metrics.listen and host and not _is_loopback_host(host) and not cfg.metrics.allow_remote:
        raise ConfigError(f"metrics.listen: {cfg.metrics.listen} is reachable from the network and "
                          "metrics have no authentication; use a loopback address or set "
                          "metrics.allow_remote = true")
    bus_bytes = cfg.bus.max_message_mb * 1024 * 1024
    for i, s in enumerate(cfg.sources):
        if s.text is not None and s.text.max_bytes > bus_bytes:
            raise ConfigError(f"sources[{i}].text.max_bytes: {s.text.max_bytes} exceeds "
                              f"bus.max_message_mb ({cfg.bus.max_message_mb:g} MB)")


def default_results_endpoint(bus_input: str) -> str:
    """``bus.results`` when not set: beside an ipc ``bus.input``, else in the temp directory."""
    p = ipc_path(bus_input)
    directory = p.parent if p is not None else Path(tempfile.gettempdir()) / "streamfuse"
    return f"ipc://{directory}/results"


def read_text(path: Path, error: Callable[[str], Exception], noun: str = "") -> str:
    """The UTF-8 text of the file ``path``, or ``error("PATH: cannot read[ NOUN]: why")`` /
    ``error("PATH: [NOUN is ]not UTF-8")`` raised."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        what = f"cannot read {noun}" if noun else "cannot read"
        raise error(f"{path}: {what}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: {noun + ' is ' if noun else ''}not UTF-8") from None


def _read(path: str | Path | None, env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The TOML data of the config file and its path; ``({}, "")`` when there is none.
    ``None`` means ``$STREAMFUSE_CONFIG``, else the system file if present."""
    if path is None:
        path = env.get("STREAMFUSE_CONFIG") or (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    if path is None:
        return {}, ""
    p = Path(path)
    text = read_text(p, ConfigError, "config")
    try:
        return tomllib.loads(text), str(p)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None


def load(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load a config file; ``None`` means ``$STREAMFUSE_CONFIG`` or the system file if present."""
    env = os.environ if environ is None else environ
    data, p = _read(path, env)
    return parse(data, path=p, environ=env)


def explain(path: str | Path | None = None, *,
            environ: Mapping[str, str] | None = None) -> tuple[Config, dict[str, str]]:
    """:func:`load`, plus where each value came from: a map from dotted keys
    (``fusion.device``, ``sources[0].video.fps``) to ``"file"`` or the variable that set
    it; keys it does not hold took their defaults."""
    env = os.environ if environ is None else environ
    data, p = _read(path, env)
    cfg = parse(data, path=p, environ=env)
    origins = {key: "file" for key in _dotted(data)}
    origins.update(_env_overrides(
        {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}, env))
    return cfg, origins


def _dotted(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _dotted(v, key + ".")
        elif isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v):
            for n, item in enumerate(v):
                out += _dotted(item, f"{key}[{n}].")
        else:
            out.append(key)
    return out


def to_toml(cfg: Config, origins: Mapping[str, str] | None = None) -> str:
    """``cfg`` as a TOML file that loads back to it; with ``origins`` (from
    :func:`explain`) each value is followed by ``# default``, ``# file`` or
    ``# <variable>``."""
    lines: list[str] = []
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        value = getattr(cfg, f.name)
        if f.name == "path":
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            _table(lines, f.name, f.name, value, origins)
        elif isinstance(value, list):
            for n, item in enumerate(value):
                _table(lines, f.name, f"{f.name}[{n}]", item, origins, array=True)
    return "\n".join(lines) + "\n"


def _table(lines: list[str], name: str, key: str, obj: Any, origins: Mapping[str, str] | None,
           *, array: bool = False) -> None:
    """Append ``[name]`` (``[[name]]``) with the scalars of ``obj``, then its sub-tables."""
    if lines:
        lines.append("")
    lines.append(f"[[{name}]]" if array else f"[{name}]")
    subtables = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue  # an absent optional table (a source without audio)
        if dataclasses.is_dataclass(value):
            subtables.append(f.name)
            continue
        line = f"{f.name} = {_toml_value(value)}"
        if origins is not None:
            line += f"  # {origins.get(f'{key}.{f.name}', 'default')}"
        lines.append(line)
    for sub in subtables:
        _table(lines, f"{name}.{sub}", f"{key}.{sub}", getattr(obj, sub), origins)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)  # inf and nan are spelt as TOML spells them
    if isinstance(v, str):
        return '"' + "".join(_toml_char(c) for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def _toml_char(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\u{ord(c):04x}"
    return c


def ipc_path(endpoint: str) -> Path | None:
    """The filesystem path of an ``ipc://`` endpoint, else None."""
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def runtime_dir(cfg: Config) -> Path:
    """Where the lock, status files and metrics live: the directory of an ipc ``bus.input``."""
    for ep in (cfg.bus.input, cfg.bus.output, cfg.align.output):
        p = ipc_path(ep)
        if p is not None:
            return p.parent
    if os.environ.get("RUNTIME_DIRECTORY"):  # systemd's RuntimeDirectory=
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    return Path(os.environ.get("XDG_RUNTIME_DIR")
                or f"/tmp/streamfuse-{os.getuid()}") / "streamfuse"


def is_local_listen(listen: str) -> bool:
    """True for a ``HOST:PORT`` on loopback (``localhost``, ``127.x.y.z``, ``[::1]``)."""
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
