"""streamfuse.fusion"""
