"""The frame plane: video frames shared between processes of one host by reference.

A capture writes each frame into a slot of a ring in shared memory
(:mod:`~streamfuse.frameplane.ring`) and publishes a small descriptor on the bus
instead of the pixels (docs/protocol.md, "Frames by reference"). Readers map the
segment and check the slot's generation before and after they look at it, so a
slot overwritten meanwhile is detected and counted, never read torn.
Everything that leaves the host carries the pixels inline
(:mod:`~streamfuse.frameplane.inline`).
"""
