"""streamfuse.align"""
