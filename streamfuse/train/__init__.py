"""streamfuse.train: recordings + labels -> labelled windows -> a model artifact, and its
evaluation."""
