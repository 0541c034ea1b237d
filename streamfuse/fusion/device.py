"""Which torch device a fusion worker runs on (``fusion.device``).

``auto`` takes the first CUDA device when torch sees one, else the CPU. ``cuda`` or
``cuda:N`` without such a device is a configuration error naming the key (exit 2), found
at start: a worker that cannot have its device would only crash and be restarted.

``python -m streamfuse.commands.device SPEC`` runs the same check in a process of its own
and prints the device (exit 0) or the one-line problem (exit 2): ``streamfuse run`` asks
it before it starts anything, so that the supervisor itself never imports torch.
"""

from __future__ import annotations

import torch

from streamfuse.config import ConfigError, device_problem

KEY = "fusion.device"


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    return f"torch (built for CUDA {torch.version.cuda}) finds no usable GPU on this machine"


def resolve(spec: str, *, key: str = KEY) -> torch.device:
    """``auto`` -> ``cuda:0`` when CUDA is usable, else ``cpu``; ``cuda`` -> ``cuda:0``.

    Raises :class:`ConfigError` (``"<key>: ..."``) for a CUDA device that is not there.
    """
    problem = device_problem(spec)
    if problem:
        raise ConfigError(f"{key}: {problem}")
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(spec)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ConfigError(f"{key}: {spec!r} needs a GPU, but {_no_cuda_reason()} "
                          f"(use 'auto' or 'cpu')")
    count = torch.cuda.device_count()
    index = 0 if dev.index is None else dev.index
    if index >= count:
        raise ConfigError(f"{key}: {spec!r}, but only {count} CUDA device(s) exist "
                          f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def describe(dev: torch.device, spec: str) -> str:
    """For the worker's start line: ``cuda:0 (NVIDIA H200)``, ``cpu (auto: <why no GPU>)``."""
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        return f"{dev} ({name}{', chosen by auto' if spec == 'auto' else ''})"
    if spec == "auto":
        return f"{dev} (auto: {_no_cuda_reason()})"
    return str(dev)
