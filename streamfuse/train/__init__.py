"""streamfuse.train"""
