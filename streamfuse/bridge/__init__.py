"""Bridges from the bus to other tools (Foxglove)."""
