"""What each optional extra is for: a ``fusion`` install without the ``demo`` extra (no
scikit-learn, no scipy) still trains, evaluates and serves; building a data set without it
names the extra. Run in a child interpreter where those packages cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCK = "import sys; sys.modules.update(sklearn=None, scipy=None); "


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_train_eval_and_worker_import_without_the_demo_extra(tmp_path: Path) -> None:
    r = _python("import streamfuse.train.loop, streamfuse.train.evaluate, streamfuse.fusion.node",
                tmp_path)
    assert r.returncode == 0, r.stderr


def test_building_a_data_set_without_it_names_the_demo_extra(tmp_path: Path) -> None:
    r = _python("from streamfuse.cli import main; "
                f"sys.exit(main(['dataset', 'avdigits', '--out', {str(tmp_path / 'd')!r}]))",
                tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "streamfuse dataset: needs sklearn, which this install lacks: install streamfuse with its "
        "'demo' extra (pip install '.[demo]' in the source tree)"]
