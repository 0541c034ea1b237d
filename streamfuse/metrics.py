"""Every Prometheus metric streamfuse exports, defined once (DESIGN.md section 11).

Each process increments these; the supervisor serves them all on
``metrics.listen``. Under the supervisor every child runs with
``PROMETHEUS_MULTIPROC_DIR`` set (prometheus-client's multiprocess mode), so
the values of all children are summed when scraped. A standalone process
(``streamfuse capture ...``) can serve its own with :func:`serve`.

Hot paths should count in plain integers and add them here periodically (or
cache ``metric.labels(...)`` children): a labelled ``inc`` costs microseconds.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# ---- bus traffic, per node and topic -------------------------------------------------
messages_in = Counter("streamfuse_messages_in_total", "Messages received", ["node", "topic"])
messages_out = Counter("streamfuse_messages_out_total", "Messages published", ["node", "topic"])
bytes_in = Counter("streamfuse_bytes_in_total", "Bytes received", ["node", "topic"])
bytes_out = Counter("streamfuse_bytes_out_total", "Bytes published", ["node", "topic"])
dropped = Counter("streamfuse_messages_dropped_total",
                  "Messages dropped (malformed, too large, invalid text, queue full, ...)",
                  ["node", "topic", "reason"])
seq_gaps = Counter("streamfuse_seq_gap_messages_total", "Messages missing by sequence number",
                   ["node", "topic"])

# ---- capture -------------------------------------------------------------------------
grabbed = Counter("streamfuse_capture_grabbed_total", "Frames or blocks read from the device",
                  ["source", "stream"])
reconnects = Counter("streamfuse_capture_reconnects_total", "Device reconnect attempts",
                     ["source", "stream"])
overflows = Counter("streamfuse_capture_overflows_total", "Audio input overflows reported by PortAudio",
                    ["source"])

# ---- aligner -------------------------------------------------------------------------
late = Counter("streamfuse_late_total", "Data older than an emitted window, dropped", ["source", "stream"])
windows = Counter("streamfuse_windows_total", "Windows emitted", ["source"])
windows_absent = Counter("streamfuse_windows_absent_total", "Windows emitted with a stream absent",
                         ["source", "stream"])
audio_coverage = Histogram("streamfuse_audio_coverage_ratio", "Fraction of a window's audio present",
                           ["source"], buckets=(0.0, 0.5, 0.9, 0.99, 1.0))

# ---- fusion --------------------------------------------------------------------------
window_latency = Histogram("streamfuse_window_latency_ms",
                           "latency_ms of classifications (part = align, queue, infer, total)",
                           ["part"], buckets=LATENCY_BUCKETS_MS)
batch_size = Histogram("streamfuse_batch_size", "Windows per inference batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
inference_ms = Histogram("streamfuse_inference_ms", "Model time per batch (preprocess + forward)",
                         buckets=LATENCY_BUCKETS_MS)
classifications = Counter("streamfuse_classifications_total", "Classifications published", ["source"])
model_info = Gauge("streamfuse_model_info", "1 for the model being served", ["model_id"],
                   multiprocess_mode="liveall")
model_load_seconds = Gauge("streamfuse_model_load_seconds", "Time the last model load took",
                           multiprocess_mode="liveall")
model_reloads = Counter("streamfuse_model_reloads_total", "Model loads by outcome", ["outcome"])
# Per live worker; the supervisor reads a dead worker's last value and counts it as dropped
# (reason worker_lost), so a SIGKILL loses no window without a count.
windows_held = Gauge("streamfuse_worker_windows_held",
                     "Windows a worker has received and not yet answered or dropped",
                     multiprocess_mode="liveall")

# ---- recorder ------------------------------------------------------------------------
recorder_bytes = Counter("streamfuse_recorder_bytes_total", "Bytes written to recordings")
recorder_messages = Counter("streamfuse_recorder_messages_total", "Messages written to recordings")
recorder_dropped = Counter("streamfuse_recorder_dropped_total", "Messages the recorder could not write",
                           ["reason"])

# ---- supervisor ----------------------------------------------------------------------
child_restarts = Counter("streamfuse_child_restarts_total", "Child process restarts", ["child"])
child_up = Gauge("streamfuse_child_up", "1 while a child process runs", ["child"],
                 multiprocess_mode="liveall")


def serve(listen: str) -> None:
    """Serve this process's metrics on ``HOST:PORT`` ("" = don't)."""
    if not listen:
        return
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
