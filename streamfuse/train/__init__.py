"""streamfuse.train: recordings + labels -> labelled windows -> a model artifact, and its evaluation.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set)
before torch is imported by its modules: with the default (spinning) policy,
two OpenMP threads on a busy 2-core host ran a training step ~7x slower than
one thread, while passive waiting made two threads the fastest (measured on
this project's shared build machine). It only takes effect when torch has not
been imported yet in the process (the CLI imports the trainer first).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
