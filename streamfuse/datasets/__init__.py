"""streamfuse.datasets"""
