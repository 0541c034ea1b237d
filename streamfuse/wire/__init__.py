"""The wire format: message schema, codec and topic names (docs/protocol.md)."""
