"""streamfuse.capture"""
