"""The wire format: message schema, codec and topic names (DESIGN.md section 3)."""
