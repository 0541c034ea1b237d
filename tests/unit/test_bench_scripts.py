"""Every benchmark script imports and has its ``main``.

Nothing else runs the scripts in bench/ (they build data and models and take minutes), so a
helper renamed under them went unnoticed: ``bench/web_clients.py`` imported ``pct`` from
``daemon_common``, and ``bench/shadow.py`` one from ``bench.infer``, for several sessions after
it had become ``streamfuse.stats.percentile``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
LIBRARIES = {"daemon_common.py"}  # shared by the scripts, no command of its own


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_bench_script_imports(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import daemon_common as a sibling
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", BENCH / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as an import would (dataclasses need it)
    spec.loader.exec_module(module)  # the scripts run only under __main__
    assert script in LIBRARIES or callable(getattr(module, "main", None))
