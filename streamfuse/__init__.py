"""streamfuse: a real-time multimodal sensor fusion daemon."""

__version__ = "0.1.0"
