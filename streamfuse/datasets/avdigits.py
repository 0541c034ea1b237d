"""``streamfuse dataset avdigits``: the reference benchmark as MCAP recordings + labels.

Each ~2 s segment holds one digit (0-9):

- video (``<source>/video``): 128x128 JPEG frames at 10 fps of that handwritten
  digit on paper, placed, scaled, rotated and lit differently per segment, with
  blur, hand jitter, sensor noise and, in 15 % of segments, a finger over part
  of it (:mod:`streamfuse.datasets.images`);
- audio (``<source>/audio``): 16 kHz mono float32 blocks of 20 ms; the digit is
  spoken once at a random offset over background sound at an SNR of 3-20 dB
  (:mod:`streamfuse.datasets.sound`);
- text (``<source>/text``): in 30 % of segments a chat line mentions the digit
  ("its 7", "sevn", ...), 12 % of those name the wrong digit; 8 % of segments
  carry unrelated chatter. Text heartbeats every 100 ms let windows close.
- 8 % of segments have the camera covered (no frames, only video heartbeats)
  and another 8 % the microphone muted (no blocks, only audio heartbeats).
- label (``<source>/label``): one label message per segment, ``[start, end)`` and the
  digit's name, the same spans as ``labels.csv``: a recording carries its own truth.

Layout (README.md, "Train on your own data"): ``OUT/{train,val,test}/`` (only ``OUT/test/``
with ``split="test"``), each with ``*.mcap`` recordings of up to 200 segments
and one ``labels.csv`` (``source,start,end,label``; ``start``/``end`` are
absolute epoch ``t_ns`` integers, ``end`` exclusive, labels ``zero``..``nine``),
plus ``OUT/avdigits.json`` describing what went where.

Splits: 70 / 15 / 15 % of the segments. Speakers (FSDD speaker names, or
espeak-ng voices) and handwriting images are partitioned between the splits,
so the test split's speakers and images are never seen in training. With
``synthetic_voices`` N and ``synthetic_segments`` M (and a speech directory), M more
segments are added to the train split after its own, each spoken by one of the first N
voices of :data:`~streamfuse.datasets.sound.SYNTHETIC_VOICES` (12 espeak-ng voices, then 4
flite voices; speaker ``espeak:VOICE`` or ``flite:VOICE`` in ``segments.csv``): extra
training speakers that never validate or test (``streamfuse crossval --train-only espeak:
flite:``); the other segments stay as without them. Time:
recordings start on the 2026-01-01T00:00:00Z epoch (train), +1 day (val), +2
days (test); the same seed gives the same messages and labels.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamfuse.clock import NS_PER_MS, NS_PER_S
from streamfuse.datasets import images as img
from streamfuse.datasets import sound
from streamfuse.progress import Progress
from streamfuse.train.labels import read_rows_by_source
from streamfuse.wire import codec
from streamfuse.wire.schema import Message

log = logging.getLogger("streamfuse.dataset")

EPOCH_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z
DAY_NS = 86_400 * NS_PER_S
SEGMENT_NS = 2000 * NS_PER_MS
TAIL_NS = 1500 * NS_PER_MS  # heartbeats after the last segment so every window can close
FRAME_PERIOD_NS = 100 * NS_PER_MS  # 10 fps
BLOCK_NS = 20 * NS_PER_MS
BLOCK_FRAMES = sound.RATE_HZ * 20 // 1000
HEARTBEAT_NS = 100 * NS_PER_MS
FRAME_SIZE = 128
JPEG_QUALITY = 80

SPLITS = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
SOURCES = ("room1", "room2")
SEGMENTS_PER_FILE = 200
P_TEXT, P_TEXT_WRONG, P_TYPO, P_CHATTER = 0.30, 0.12, 0.25, 0.08
P_CAMERA_COVERED, P_MIC_MUTED, P_OCCLUDED = 0.08, 0.08, 0.15
SNR_DB = (3.0, 20.0)
LABELS = sound.DIGIT_WORDS


@dataclass(frozen=True)
class Params:
    """What to build. ``images``: "sklearn" or an MNIST idx path; ``speech``/``noise``: dirs or
    None."""

    segments: int = 2000
    seed: int = 0
    split: str = "all"  # "all" or "test"
    images: str = "sklearn"
    speech: str | None = None
    noise: str | None = None
    segments_per_file: int = SEGMENTS_PER_FILE
    # synthetic voices added to the speech directory's speakers, and segments they speak
    # (train split only); 0 = none, and the data set is as without these fields.
    synthetic_voices: int = 0
    synthetic_segments: int = 0
    # the synthetic voices at their full band instead of the recorded speech's (the data sets
    # built before they were band-limited)
    synthetic_full_band: bool = False

    def summary(self) -> dict[str, Any]:
        """The fields as ``avdigits.json`` records them (the synthetic ones only when set)."""
        d = asdict(self)
        if not (self.synthetic_voices or self.synthetic_segments):
            del d["synthetic_voices"], d["synthetic_segments"]
        if not self.synthetic_full_band:
            del d["synthetic_full_band"]
        return d

    def synthetic(self) -> tuple[str, ...]:
        """The synthetic voices added as training speakers (none without synthetic segments).
        Raises ``ValueError`` for counts it cannot honour."""
        n, m = self.synthetic_voices, self.synthetic_segments
        if n < 0 or m < 0:
            raise ValueError("synthetic voices and segments cannot be negative")
        if not (n or m):
            if self.synthetic_full_band:
                raise ValueError("the full band is for synthetic voices: add some")
            return ()
        if n == 0 or m == 0:
            raise ValueError("synthetic voices need synthetic segments to speak, and the "
                             "other way round")
        if n > len(sound.SYNTHETIC_VOICES):
            raise ValueError(f"at most {len(sound.SYNTHETIC_VOICES)} synthetic voices")
        if self.speech is None:
            raise ValueError("synthetic voices are added to a directory of recorded speech")
        if self.split != "all":
            raise ValueError("synthetic voices go to the train split: build all splits")
        return sound.SYNTHETIC_VOICES[:n]


@dataclass
class Segment:
    """One planned segment; times are absolute epoch ns."""

    index: int
    digit: int
    image: int
    speaker: str
    t_start_ns: int
    video: bool = True
    audio: bool = True
    occluded: bool = False
    texts: list[tuple[int, str]] = field(default_factory=list)  # (t_ns, text)
    # Chat line about the digit: (offset ns, text, digit named).
    mention: tuple[int, str, int] | None = None
    # Audible part of the spoken digit, set by segment_events.
    speech_ns: tuple[int, int] | None = None


@dataclass
class SplitPlan:
    name: str
    base_ns: int
    segments: list[Segment]
    speakers: list[str]
    image_pool: list[int]


# ----------------------------------------------------------------------------- planning


def plan(params: Params, images: img.DigitImages, speakers: list[str],
         synthetic: list[str] | None = None) -> list[SplitPlan]:
    """Decide every segment's digit, image, speaker, missing streams and chat.
    ``synthetic``: the speakers of ``params.synthetic_segments`` more train segments."""
    rng = np.random.default_rng([params.seed, 0])
    n = len(images.labels)
    if params.split == "test":
        names, fractions = ["test"], [1.0]
    else:
        names, fractions = list(SPLITS), list(FRACTIONS)
    perm = rng.permutation(n)
    bounds = np.round(np.cumsum([0.0, *fractions]) * n).astype(int)
    image_pools = [sorted(perm[bounds[i]:bounds[i + 1]].tolist()) for i in range(len(names))]
    speaker_groups = (sound.split_speakers(speakers, fractions, rng) if len(names) > 1
                      else [sorted(speakers)])
    counts = [int(round(f * params.segments)) for f in fractions]
    counts[0] += params.segments - sum(counts)
    plans = []
    for i, name in enumerate(names):
        split_idx = SPLITS.index(name)
        base = EPOCH_NS + split_idx * DAY_NS
        segs = _plan_split(params, split_idx, counts[i], images, image_pools[i], speaker_groups[i])
        plans.append(SplitPlan(name, base, segs, speaker_groups[i], image_pools[i]))
    if synthetic and params.synthetic_segments:
        # After the split's own segments, from their own random streams: those stay as they
        # are without synthetic voices.
        train = plans[0]
        train.segments += _plan_split(params, 0, params.synthetic_segments, images,
                                      train.image_pool, sorted(synthetic),
                                      first=len(train.segments), stream=9)
        train.speakers = train.speakers + sorted(synthetic)
    return plans


def _plan_split(params: Params, split_idx: int, count: int, images: img.DigitImages,
                pool: list[int], speakers: list[str], *, first: int = 0,
                stream: int = 1) -> list[Segment]:
    """``count`` segments numbered from ``first``, drawn from random stream ``stream``."""
    rng = np.random.default_rng([params.seed, stream, split_idx])
    # Balanced classes: each digit equally often (up to one), in random order.
    digits = rng.permutation(np.resize(np.arange(10), count))
    by_digit = {d: [i for i in pool if images.labels[i] == d] for d in range(10)}
    missing = [d for d, ids in by_digit.items() if not ids]
    if missing and count:
        raise ValueError(f"no image of digit {missing[0]} in this split's share of {images.origin}")
    order = {d: rng.permutation(ids).tolist() for d, ids in by_digit.items()}
    used = dict.fromkeys(range(10), 0)
    segs = []
    for k, d in enumerate(digits.tolist()):
        ids = order[d]
        image = ids[used[d] % len(ids)]  # cycle only when a split has fewer images than segments
        used[d] += 1
        segs.append(Segment(index=first + k, digit=d, image=int(image),
                            speaker=speakers[int(rng.integers(len(speakers)))], t_start_ns=0))
    for s in segs:
        srng = _segment_rng(params.seed, split_idx, s.index, "plan")
        r = srng.random()
        s.video = not (r < P_CAMERA_COVERED)
        s.audio = not (P_CAMERA_COVERED <= r < P_CAMERA_COVERED + P_MIC_MUTED)
        s.occluded = bool(srng.random() < P_OCCLUDED)
        if srng.random() < P_TEXT:
            t = _text_time(srng)
            line, named = chat_mention(s.digit, srng)
            s.texts.append((t, line))
            s.mention = (t, line, named)
        if srng.random() < P_CHATTER:
            s.texts.append((_text_time(srng), str(srng.choice(CHATTER))))
    return segs


def _segment_rng(seed: int, split_idx: int, index: int, purpose: str) -> np.random.Generator:
    # One generator per segment and purpose: a segment does not depend on its neighbours.
    return np.random.default_rng([seed, 2 + split_idx, index, sum(map(ord, purpose))])


def _text_time(rng: np.random.Generator) -> int:
    """Offset into the segment (ns); the caller adds the segment start."""
    return int(rng.uniform(0.1, 1.9) * NS_PER_S)


TEMPLATES = ("{w}", "{n}", "its {w}", "it's a {w}", "{w}!", "i see a {n}", "that's {w}", "{W}",
             "number {n}", "looks like {w} to me", "{w}?", "ok {w}")
CHATTER = ("hello", "can you hear me", "lol", "brb", "one sec", "ok", "nice", "what was that",
           "hang on", "the light is bad here", "yes", "no")


def chat_mention(digit: int, rng: np.random.Generator) -> tuple[str, int]:
    """A chat message about ``digit`` (sometimes wrong, sometimes with a typo) and the digit
    it names (``digit``, or another when it is wrong)."""
    if rng.random() < P_TEXT_WRONG:
        digit = int((digit + rng.integers(1, 10)) % 10)
    word = LABELS[digit]
    if rng.random() < P_TYPO:
        word = typo(word, rng)
    t = str(rng.choice(TEMPLATES))
    return t.format(w=word, W=word.upper(), n=digit), digit


def typo(word: str, rng: np.random.Generator) -> str:
    """Drop, double, swap or replace one letter."""
    i = int(rng.integers(len(word)))
    op = int(rng.integers(4))
    if op == 0 and len(word) > 2:
        return word[:i] + word[i + 1:]
    if op == 1:
        return word[:i] + word[i] + word[i:]
    if op == 2 and i < len(word) - 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + "qwertyuiopasdfghjklzxcvbnm"[int(rng.integers(26))] + word[i + 1:]


# ----------------------------------------------------------------------------- messages


@dataclass
class Media:
    images: img.DigitImages
    speech: sound.SpeechBank
    noise: sound.NoiseBank


def segment_events(seg: Segment, t0: int, media: Media, *, seed: int, split_idx: int
                   ) -> list[tuple[int, int, str, object]]:
    """``(t_ns, rank, stream, data)`` for one segment starting at ``t0``.

    ``data`` is JPEG bytes (video), a float32 block (audio), a str (text) or
    None (a heartbeat on ``stream``). ``rank`` orders equal times.
    """
    ev: list[tuple[int, int, str, object]] = []
    rng = _segment_rng(seed, split_idx, seg.index, "media")
    n_frames = SEGMENT_NS // FRAME_PERIOD_NS
    if seg.video:
        scene = img.render_scene(media.images.ink[seg.image], rng, size=FRAME_SIZE,
                                 occlude=seg.occluded)
        for j in range(n_frames):
            # Cameras deliver a little late, never early.
            jitter = int(rng.integers(0, 4 * NS_PER_MS))
            frame = img.camera_frame(scene, rng)
            ev.append((t0 + j * FRAME_PERIOD_NS + jitter, 0, "video",
                       img.encode_jpeg(frame, JPEG_QUALITY)))
    else:
        ev += [(t0 + j * FRAME_PERIOD_NS, 0, "video", None) for j in range(n_frames)]
    n_samples = sound.RATE_HZ * SEGMENT_NS // NS_PER_S
    if seg.audio:
        speech = media.speech.utterance(seg.speaker, seg.digit, rng)[: int(1.5 * sound.RATE_HZ)]
        lo, hi = int(0.25 * sound.RATE_HZ), int(1.75 * sound.RATE_HZ) - len(speech)
        offset = int(rng.integers(lo, max(lo + 1, hi)))
        bg = media.noise.background(n_samples, rng)
        pcm = sound.mix(speech, bg, offset=offset, snr_db=float(rng.uniform(*SNR_DB)),
                        level=float(rng.uniform(0.03, 0.25)))
        a, b = sound.audible_span(speech)
        seg.speech_ns = (t0 + (offset + a) * NS_PER_S // sound.RATE_HZ,
                         t0 + (offset + b) * NS_PER_S // sound.RATE_HZ)
        for j in range(n_samples // BLOCK_FRAMES):
            ev.append((t0 + j * BLOCK_NS, 1, "audio",
                       pcm[j * BLOCK_FRAMES:(j + 1) * BLOCK_FRAMES].reshape(-1, 1)))
    else:
        ev += [(t0 + j * HEARTBEAT_NS, 1, "audio", None)
               for j in range(SEGMENT_NS // HEARTBEAT_NS)]
    for dt, text in seg.texts:
        ev.append((t0 + dt, 2, "text", text))
    ev += [(t0 + j * HEARTBEAT_NS, 3, "text", None) for j in range(SEGMENT_NS // HEARTBEAT_NS)]
    ev.sort(key=lambda e: (e[0], e[1]))
    return ev


class _Publisher:
    """Turns events into wire messages with per-topic sequence numbers."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.seq: dict[str, int] = {}

    def message(self, t_ns: int, stream: str, data: object) -> Message:
        seq = self.seq.get(stream, 0)
        self.seq[stream] = seq + 1
        if data is None:
            return codec.heartbeat_message(self.source, stream, seq, t_ns)
        if stream == "video":
            assert isinstance(data, bytes)
            return codec.frame_message(self.source, seq, t_ns, data, encoding="jpeg",
                                       shape=(FRAME_SIZE, FRAME_SIZE, 3))
        if stream == "audio":
            assert isinstance(data, np.ndarray)
            return codec.audio_message(self.source, seq, t_ns, data, sound.RATE_HZ)
        return codec.text_message(self.source, seq, t_ns, str(data), origin="zmq")


def recording_messages(segs: list[Segment], source: str, t0: int, media: Media, *, seed: int,
                       split_idx: int, progress: Progress | None = None) -> Iterator[Message]:
    """Every message of one recording, in ``t_ns`` order; sets each segment's start.
    ``progress`` advances by one per segment."""
    pub = _Publisher(source)
    for k, seg in enumerate(segs):
        seg.t_start_ns = t0 + k * SEGMENT_NS
        seq = pub.seq.get("label", 0)
        pub.seq["label"] = seq + 1
        yield codec.label_message(source, seq, seg.t_start_ns, seg.t_start_ns + SEGMENT_NS,
                                  LABELS[seg.digit])
        for t, _rank, stream, data in segment_events(seg, seg.t_start_ns, media, seed=seed,
                                                     split_idx=split_idx):
            yield pub.message(t, stream, data)
        if progress is not None:
            progress.update()
    end = t0 + len(segs) * SEGMENT_NS
    for j in range(TAIL_NS // HEARTBEAT_NS + 1):
        for stream in ("video", "audio", "text"):
            yield pub.message(end + j * HEARTBEAT_NS, stream, None)


# ----------------------------------------------------------------------------- building


def build(out: Path, params: Params) -> dict:
    """Build the dataset under ``out``; returns the summary also written to ``avdigits.json``.

    Raises ``ValueError`` for unusable inputs or an ``out`` that already holds recordings.
    """
    images = img.load_images(params.images)
    media = Media(images, sound.SpeechBank(params.speech, params.synthetic(),
                                             full_band=params.synthetic_full_band),
                  sound.NoiseBank(params.noise))
    plans = plan(params, images, media.speech.speakers, media.speech.synthetic_speakers)
    for p in plans:
        d = out / p.name
        if d.exists() and (any(d.glob("*.mcap")) or (d / "labels.csv").exists()):
            raise ValueError(f"{d} already holds a dataset; choose an empty --out")
    summary: dict = {"dataset": "avdigits", "params": params.summary(), "labels": list(LABELS),
                     "images": images.origin, "speech": media.speech.origin,
                     "noise": media.noise.origin,
                     "label_times": "absolute epoch t_ns, end exclusive", "splits": {}}
    with Progress("avdigits", sum(len(p.segments) for p in plans), unit="segment") as bar:
        for p in plans:
            summary["splits"][p.name] = _build_split(out, p, params, media, bar)
    (out / "avdigits.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _build_split(out: Path, p: SplitPlan, params: Params, media: Media, bar: Progress) -> dict:
    """Write one split's recordings, ``labels.csv`` and segments file; its summary."""
    from streamfuse.record.writer import RecordingWriter

    split_idx = SPLITS.index(p.name)
    d = out / p.name
    d.mkdir(parents=True, exist_ok=True)
    files = []
    rows: list[tuple[str, int, int, str]] = []
    sourced: list[tuple[str, Segment]] = []
    per_file = max(1, params.segments_per_file)
    n_files = (len(p.segments) + per_file - 1) // per_file
    for k in range(n_files):
        segs = p.segments[k * per_file:(k + 1) * per_file]
        source = SOURCES[k % len(SOURCES)]
        # Files follow each other in time with a gap, so sources and splits never overlap.
        t0 = p.base_ns + k * (per_file * SEGMENT_NS + 10 * SEGMENT_NS)
        path = d / f"{p.name}-{k:03d}-{source}.mcap"
        meta = {"dataset": "avdigits", "split": p.name, "seed": str(params.seed), "source": source}
        with RecordingWriter(path, metadata=meta) as w:
            for msg in recording_messages(segs, source, t0, media, seed=params.seed,
                                          split_idx=split_idx, progress=bar):
                w.write_message(msg)
        rows += [(source, s.t_start_ns, s.t_start_ns + SEGMENT_NS, LABELS[s.digit]) for s in segs]
        sourced += [(source, s) for s in segs]
        files.append(path.name)
        log.debug("%s: %d segments (%d/%d files of %s)", path, len(segs), k + 1, n_files, p.name)
    write_labels(d / "labels.csv", rows)
    write_segments(d / SEGMENTS_FILE, sourced)
    return _split_summary(p, files)


def write_labels(path: Path, rows: list[tuple[str, int, int, str]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["source", "start", "end", "label"])
        w.writerows(rows)


SEGMENTS_FILE = "segments.csv"
SEGMENT_COLUMNS = ("source", "start", "end", "label", "image", "speaker", "camera", "microphone",
                   "occluded", "speech_start", "speech_end", "chat_time", "chat_names", "chat")


def write_segments(path: Path, segs: list[tuple[str, Segment]]) -> None:
    """What each segment holds (``segments.csv``, beside ``labels.csv``): its label, the
    MNIST image index and speaker, which streams are present, the audible span of the
    spoken digit and the chat line about the digit, if any, with the digit it names
    (absolute ``t_ns``; empty where there is none). Read by :func:`read_segments` to
    tell which windows carry their label in some modality (:func:`window_evidence`)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SEGMENT_COLUMNS)
        for source, s in segs:
            chat = ("", "", "") if s.mention is None else \
                (s.t_start_ns + s.mention[0], LABELS[s.mention[2]], s.mention[1])
            w.writerow([source, s.t_start_ns, s.t_start_ns + SEGMENT_NS, LABELS[s.digit], s.image,
                        s.speaker, int(s.video), int(s.audio), int(s.occluded),
                        *(s.speech_ns or ("", "")), *chat])


class SegmentsError(ValueError):
    """A ``segments.csv`` that cannot be read (the message names the file and line)."""


@dataclass(frozen=True)
class SegmentRow:
    """One line of ``segments.csv`` (times are absolute ``t_ns``)."""

    start: int
    end: int
    label: str
    camera: bool
    occluded: bool
    speech: tuple[int, int] | None
    chat_time: int | None
    chat_names: str | None


def read_segments(paths: list[Path]) -> dict[str, list[SegmentRow]]:
    """The ``segments.csv`` files ``paths`` as rows per source, in time order.

    Raises :class:`SegmentsError` naming the file and line of a row it cannot read."""
    return read_rows_by_source(paths, _segment_row, columns=SEGMENT_COLUMNS,
                               error=SegmentsError)


def _segment_row(r: dict[str, str]) -> SegmentRow:
    speech = (int(r["speech_start"]), int(r["speech_end"])) if r["speech_start"] else None
    return SegmentRow(int(r["start"]), int(r["end"]), r["label"], r["camera"] == "1",
                      r["occluded"] == "1", speech,
                      int(r["chat_time"]) if r["chat_time"] else None, r["chat_names"] or None)


def find_segment_files(recordings: list[str]) -> list[Path]:
    """``segments.csv`` of every directory among ``recordings`` (as for ``labels.csv``)."""
    return [Path(p) / SEGMENTS_FILE for p in recordings if (Path(p) / SEGMENTS_FILE).is_file()]


# What in a window shows its label, strongest first (see window_evidence).
EVIDENCE = ("camera", "camera, finger over the digit", "speech", "chat", "speech fragment", "none")
SPEECH_MIN_NS = 150 * NS_PER_MS


def window_evidence(rows: list[SegmentRow], start: int, window_ns: int, context_ns: int,
                    label: str) -> str:
    """Which modality carries ``label`` in the window ``[start, start + window_ns)``.

    ``camera``: a segment with that label is in view, uncovered (``camera, finger over
    the digit``: only with a finger over part of it); else ``speech``: at least 150 ms
    of its audible spoken digit falls in the window; else ``chat``: a chat line naming
    the label is in the window's text context ``[end - context_ns, end)``; else
    ``speech fragment``: under 150 ms of speech; else ``none``: nothing in the window
    shows its label (camera covered, no speech, no chat naming it), so no model can
    do better than a guess there.
    """
    end = start + window_ns
    mine = [r for r in rows if r.start < end and r.end > start and r.label == label]
    if any(r.camera and not r.occluded for r in mine):
        return "camera"
    if any(r.camera for r in mine):
        return "camera, finger over the digit"
    heard = heard_ns(rows, start, window_ns, label)
    if heard >= SPEECH_MIN_NS:
        return "speech"
    if any(r.chat_time is not None and end - context_ns <= r.chat_time < end
           and r.chat_names == label for r in rows):
        return "chat"
    return "speech fragment" if heard > 0 else "none"


def heard_ns(rows: list[SegmentRow], start: int, window_ns: int, label: str) -> int:
    """How much of a spoken ``label`` (its audible span, microphone on) falls in the window
    ``[start, start + window_ns)``: the most of any one segment's, in ns (0: none)."""
    end = start + window_ns
    return max((min(end, r.speech[1]) - max(start, r.speech[0]) for r in rows
                if r.speech and r.label == label and r.start < end and r.end > start),
               default=0)


def speech_windows(segments: dict[str, list[SegmentRow]], keys: list[tuple[str, int]],
                   labels: list[str], window_ns: int, *, whole: bool = False) -> list[bool]:
    """Per window (``keys``, true ``labels``): whether it holds at least 150 ms of its spoken
    digit (``SPEECH_MIN_NS``), the windows on which audio alone can be scored; ``whole``:
    whether it holds all of the word's audible span."""
    if not whole:
        return [heard_ns(segments.get(source, []), start, window_ns, label) >= SPEECH_MIN_NS
                for (source, start), label in zip(keys, labels, strict=True)]
    return [any(r.speech is not None and r.label == label and start <= r.speech[0]
                and r.speech[1] <= start + window_ns for r in segments.get(source, []))
            for (source, start), label in zip(keys, labels, strict=True)]


def _split_summary(p: SplitPlan, files: list[str]) -> dict:
    segs = p.segments
    return {
        "files": files,
        "segments": len(segs),
        "classes": {LABELS[d]: sum(s.digit == d for s in segs) for d in range(10)},
        "speakers": p.speakers,
        "images": sorted({s.image for s in segs}),
        "camera_covered": sum(not s.video for s in segs),
        "mic_muted": sum(not s.audio for s in segs),
        "occluded": sum(s.occluded for s in segs),
        "with_text": sum(bool(s.texts) for s in segs),
        "t_start_ns": min((s.t_start_ns for s in segs), default=0),
        "t_end_ns": max((s.t_start_ns + SEGMENT_NS for s in segs), default=0),
    }


class EvidenceBreakdown:
    """``streamfuse eval``'s view of avdigits: accuracy by what in each window shows its label
    (``segments.csv``, :func:`window_evidence`), and over the windows where something does
    (``accuracy_observable``). A :class:`streamfuse.train.evaluate.Breakdown`."""

    def __init__(self, segments: dict[str, list[SegmentRow]], *, window_ms: int,
                 text_context_ms: int) -> None:
        self.segments = segments
        self.window_ns = window_ms * NS_PER_MS
        self.context_ns = text_context_ms * NS_PER_MS

    @classmethod
    def for_recordings(cls, recordings: list[str], *, window_ms: int,
                       text_context_ms: int) -> EvidenceBreakdown | None:
        """From the ``segments.csv`` beside ``recordings``; None when there is none.
        Raises :class:`SegmentsError` for an unreadable one."""
        files = find_segment_files(recordings)
        if not files:
            return None
        return cls(read_segments(files), window_ms=window_ms, text_context_ms=text_context_ms)

    def compute(self, correct: list[bool], keys: list[tuple[str, int]], classes: list[str],
                y: list[int]) -> dict[str, Any]:
        groups: dict[str, list[int]] = {}
        for ok, (source, start), label in zip(correct, keys, y, strict=True):
            kind = window_evidence(self.segments.get(source, []), start, self.window_ns,
                                   self.context_ns, classes[label])
            groups.setdefault(kind, [0, 0])
            groups[kind][0] += 1
            groups[kind][1] += int(ok)
        seen = [v for k, v in groups.items() if k != "none"]
        n_seen = sum(v[0] for v in seen)
        return {"by_evidence": {k: {"n": groups[k][0], "accuracy": groups[k][1] / groups[k][0]}
                                for k in EVIDENCE if k in groups},
                "accuracy_observable": sum(v[1] for v in seen) / n_seen if n_seen else None,
                "n_unobservable": groups.get("none", [0])[0]}

    def markdown(self, r: dict[str, Any]) -> list[str]:
        if not r.get("by_evidence"):
            return []
        lines = ["", "## Accuracy by what shows the label (avdigits segments.csv)", "",
                 "| evidence in the window | windows | accuracy |", "|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['accuracy']:.4f} |" for k, v in r["by_evidence"].items()]
        if r.get("accuracy_observable") is not None:
            lines += ["", "Accuracy over the windows where some modality shows the label: "
                          f"{r['accuracy_observable']:.4f} ({r['n_unobservable']} windows show it "
                          "nowhere)."]
        return lines
