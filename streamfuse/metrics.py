"""Every Prometheus metric streamfuse exports, defined once (README.md, "Metrics").

Each process increments these; the supervisor serves them all on
``metrics.listen``. Under the supervisor every child runs with
``PROMETHEUS_MULTIPROC_DIR`` set (prometheus-client's multiprocess mode), so
the values of all children are summed when scraped. A standalone process
(``streamfuse capture ...``) can serve its own with :func:`serve`.

Hot paths should count in plain integers and add them here periodically (or
cache ``metric.labels(...)`` children): a labelled ``inc`` costs microseconds.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("streamfuse.metrics")

# Durations are in seconds, Prometheus's base unit, so PromQL and dashboards need no scaling.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)

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
seq_resets = Counter("streamfuse_seq_resets_total",
                     "Sequence numbers that restarted or jumped too far to be losses",
                     ["node", "topic"])

# Source names beyond streamfuse.names.MAX_NAMES per process are counted under
# source="_other" (topic "_other/<stream>"): a publisher inventing names cannot grow this.
names_folded = Counter("streamfuse_source_names_folded_total",
                       "Source names beyond the per-process cap, counted under source=\"_other\"",
                       ["node"])

# ---- capture -------------------------------------------------------------------------
grabbed = Counter("streamfuse_capture_grabbed_total", "Frames or blocks read from the device",
                  ["source", "stream"])
reconnects = Counter("streamfuse_capture_reconnects_total", "Device reconnect attempts",
                     ["source", "stream"])
overflows = Counter("streamfuse_capture_overflows_total",
                    "Audio input overflows reported by PortAudio", ["source"])

# ---- aligner -------------------------------------------------------------------------
late = Counter("streamfuse_late_total", "Data older than an emitted window, dropped",
               ["source", "stream"])
windows = Counter("streamfuse_windows_total", "Windows emitted", ["source"])
windows_absent = Counter("streamfuse_windows_absent_total", "Windows emitted with a stream absent",
                         ["source", "stream"])
resyncs = Counter("streamfuse_resyncs_total",
                  "Times a source's timeline moved (sustained data far from its clock)", ["source"])
audio_coverage = Histogram("streamfuse_audio_coverage_ratio",
                           "Fraction of a window's audio present",
                           ["source"], buckets=(0.0, 0.5, 0.9, 0.99, 1.0))

# ---- fusion --------------------------------------------------------------------------
window_latency = Histogram("streamfuse_window_latency_seconds",
                           "Classification latency, the message's latency_ms in seconds "
                           "(part = align, queue, infer, total)",
                           ["part"], buckets=LATENCY_BUCKETS_S)
batch_size = Histogram("streamfuse_batch_size", "Windows per inference batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
inference_seconds = Histogram("streamfuse_inference_seconds",
                              "Model time per batch (preprocess + forward)",
                              buckets=LATENCY_BUCKETS_S)
classifications = Counter("streamfuse_classifications_total", "Classifications published",
                          ["source"])
model_info = Gauge("streamfuse_model_info", "1 for the model being served", ["model_id"],
                   multiprocess_mode="liveall")
model_load_seconds = Gauge("streamfuse_model_load_seconds", "Time the last model load took",
                           multiprocess_mode="liveall")
model_reloads = Counter("streamfuse_model_reloads_total", "Model loads by outcome", ["outcome"])
worker_device = Gauge("streamfuse_worker_device_info",
                      "1 for the torch device a fusion worker runs on (cpu, cuda:N)", ["device"],
                      multiprocess_mode="liveall")
# Per live worker; the supervisor reads a dead worker's last value and counts it as dropped
# (reason worker_lost), so a SIGKILL loses no window without a count.
windows_held = Gauge("streamfuse_worker_windows_held",
                     "Windows a worker has received and not yet answered or dropped",
                     multiprocess_mode="liveall")

# ---- shadow model (figures over fusion.judge_period_s) -----------------------------------
shadow_classifications = Counter("streamfuse_shadow_classifications_total",
                                 "Shadow model answers published on shadow/<source>", ["source"])
shadow_inference_seconds = Histogram("streamfuse_shadow_inference_seconds",
                                     "Shadow model time per batch (preprocess + forward)",
                                     buckets=LATENCY_BUCKETS_S)
shadow_agreement = Gauge("streamfuse_shadow_agreement_ratio",
                         "Share of windows where the shadow and live models give the same label",
                         multiprocess_mode="liveall")
judged_windows = Gauge("streamfuse_judged_windows",
                       "Windows both models answered in the period (kind = all, labelled)",
                       ["kind"],
                       multiprocess_mode="liveall")
labelled_accuracy = Gauge("streamfuse_labelled_accuracy_ratio",
                          "Accuracy on the period's windows that carry a label "
                          "(role = live, shadow)",
                          ["role", "model_id"], multiprocess_mode="liveall")
shadow_info = Gauge("streamfuse_shadow_model_info", "1 for the shadow model being judged",
                    ["model_id"], multiprocess_mode="liveall")
promotions = Counter("streamfuse_promotions_total", "Shadow models made live by fusion.promote_if")

# ---- recorder ------------------------------------------------------------------------
recorder_bytes = Counter("streamfuse_recorder_bytes_total", "Bytes written to recordings")
recorder_messages = Counter("streamfuse_recorder_messages_total", "Messages written to recordings")
recorder_dropped = Counter("streamfuse_recorder_dropped_total",
                           "Messages the recorder could not write", ["reason"])
recorder_removed = Counter("streamfuse_recorder_files_removed_total",
                           "Recordings removed by retention (reason = size, age)", ["reason"])

# ---- web console ---------------------------------------------------------------------
web_clients = Gauge("streamfuse_web_clients", "Browsers connected to the live console",
                    multiprocess_mode="livesum")
web_updates = Counter("streamfuse_web_updates_total", "Live console updates sent to browsers",
                      ["kind"])
web_dropped = Counter("streamfuse_web_dropped_total",
                      "Live console updates a browser never got because it fell behind "
                      "(latest wins)",
                      ["kind"])
web_sources_hidden = Counter("streamfuse_web_sources_hidden_total",
                             "Sources the live console shows no panel for: its "
                             "streamfuse.web.state.MAX_PANELS panels were all configured "
                             "sources or heard within a minute")

# ---- supervisor ----------------------------------------------------------------------
child_restarts = Counter("streamfuse_child_restarts_total", "Child process restarts", ["child"])
child_up = Gauge("streamfuse_child_up", "1 while a child process runs", ["child"],
                 multiprocess_mode="liveall")


def merge_files(directory: Path) -> Any:
    """The metric families of every process's file in ``directory`` (multiprocess mode),
    summed across processes.

    A child that starts creates its ``*.db`` file empty and then maps it; read in between,
    the stock collector raises (``struct.error``): that file is left out of this read.
    """
    from prometheus_client.multiprocess import MultiProcessCollector

    merge = MultiProcessCollector.merge
    files = [str(f) for f in directory.glob("*.db")]
    try:
        return merge(files, accumulate=True)
    except (struct.error, OSError, ValueError):
        good = []
        for f in files:
            try:
                merge([f], accumulate=True)
                good.append(f)
            except (struct.error, OSError, ValueError):
                log.debug("metrics: skipping %s (being written)", f)
        return merge(good, accumulate=True)


def serve(listen: str) -> None:
    """Serve this process's metrics on ``HOST:PORT`` ("" = don't)."""
    if not listen:
        return
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
