"""streamfuse.record"""
