"""The daemon: broker, process table, supervisor, systemd notify, metrics."""
