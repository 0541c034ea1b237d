"""Spoken digits and background sound for ``avdigits`` (16 kHz mono float32).

Speech comes from a directory of wavs named like the Free Spoken Digit Dataset
(``{digit}_{speaker}_{n}.wav``, any sample rate, resampled to 16 kHz) or, with no
directory, from espeak-ng voices (accent + voice variant = one "speaker"; each
utterance uses one of a few speeds and pitches, synthesised once and cached).
Speakers are what the splits keep apart. With a directory, ``synthetic`` voices can be added
as extra speakers, for training only (``streamfuse dataset avdigits --synthetic-voices N``):
the first N of :data:`SYNTHETIC_VOICES`, espeak-ng's (``espeak:VOICE``) and then flite's
(``flite:VOICE``, four recorded voices: more natural than espeak-ng's formant synthesis).
Background sound comes from a directory of wavs (looped and cut at random points) or is
generated (coloured noise, mains hum, babble-like modulated noise, beeps).
"""

from __future__ import annotations

import io
import math
import re
import subprocess
import wave
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

RATE_HZ = 16000
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_RE = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")

# espeak-ng "speakers": accent + voice variant (all ship with espeak-ng-data).
ESPEAK_VOICES = (
    "en-us+m1", "en-us+f2", "en+m3", "en+f3", "en-gb-scotland+m2", "en-029+f4",
    "en-gb-x-rp+m4", "en-gb-x-gbclan+f1", "en-gb-x-gbcwmd+m7", "en-us+klatt2",
    "en+Andy", "en-us+anika",
)
# flite's built-in voices (Debian's flite): a diphone voice and three CMU ARCTIC speakers.
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
# Speaker names of the voices that can be added to a directory's speakers, in the order
# ``--synthetic-voices N`` takes them (so the first 12 are what they were before flite's).
ESPEAK_PREFIX, FLITE_PREFIX = "espeak:", "flite:"
SYNTHETIC_VOICES = (tuple(ESPEAK_PREFIX + v for v in ESPEAK_VOICES)
                    + tuple(FLITE_PREFIX + v for v in FLITE_VOICES))
ESPEAK_SPEEDS = (130, 165, 200)  # words per minute
ESPEAK_PITCHES = (30, 50, 70)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a PCM wav (8/16/32-bit)."""
    try:
        with wave.open(str(path), "rb") as w:
            rate, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (OSError, wave.Error, EOFError) as e:
        raise ValueError(f"{path}: cannot read wav: {e}") from None
    return _pcm_to_float(raw, ch, width), rate


def _pcm_to_float(raw: bytes, channels: int, width: int) -> np.ndarray:
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw[: len(raw) // 2 * 2], "<i2").astype(np.float32) / 32768
    elif width == 4:
        x = np.frombuffer(raw[: len(raw) // 4 * 4], "<i4").astype(np.float32) / 2**31
    else:
        raise ValueError(f"unsupported sample width {width}")
    if channels > 1:
        x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32)


def resample(x: np.ndarray, rate_in: int, rate_out: int = RATE_HZ) -> np.ndarray:
    """Polyphase resampling by the exact rational ratio (e.g. 8000 -> 16000, 22050 -> 16000)."""
    if rate_in == rate_out:
        return x.astype(np.float32)
    # scipy comes with the 'demo' extra: only building data sets needs it, not eval
    from scipy.signal import resample_poly

    f = Fraction(rate_out, rate_in)
    return resample_poly(x, f.numerator, f.denominator).astype(np.float32)


def trim_silence(x: np.ndarray, *, threshold: float = 0.02) -> np.ndarray:
    """Cut leading/trailing samples below ``threshold`` x peak (espeak pads with silence)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x
    loud = np.flatnonzero(np.abs(x) > threshold * peak)
    lo, hi = max(0, loud[0] - 160), min(len(x), loud[-1] + 160)
    return x[lo:hi]


class SpeechBank:
    """Utterances of each digit by named speakers, at 16 kHz.

    ``speakers``: sorted speaker names. :meth:`utterance` picks one of a
    speaker's takes of a digit with ``rng`` and returns float32 samples.
    ``synthetic`` (only with ``speech_dir``): voices of :data:`SYNTHETIC_VOICES`
    (``espeak:VOICE``, ``flite:VOICE``), kept apart from ``speakers`` as ``synthetic_speakers``.
    They are heard through the recorded speakers' channel: band-limited to half the lowest
    sample rate of the directory's wavs (FSDD's 8 kHz: nothing above 4 kHz, where espeak-ng
    and flite put fricatives that the recorded voices never have), unless ``full_band``.
    ``rate_hz``: that lowest rate (:data:`RATE_HZ` without a directory or synthetic voices).
    """

    def __init__(self, speech_dir: str | None, synthetic: Sequence[str] = (), *,
                 full_band: bool = False) -> None:
        self.origin = speech_dir or "espeak-ng"
        self._files: dict[tuple[str, int], list[Path]] = {}
        self._cache: dict[object, np.ndarray] = {}
        unknown = sorted(set(synthetic) - set(SYNTHETIC_VOICES))
        if unknown:
            raise ValueError(f"unknown synthetic voices {unknown} (known: "
                             f"{', '.join(SYNTHETIC_VOICES)})")
        self.synthetic_speakers = list(synthetic)
        self.rate_hz = RATE_HZ
        self._full_band = full_band
        if speech_dir is None:
            if synthetic:
                raise ValueError("synthetic voices are added to a directory of recorded "
                                 "speech (without one every speaker is synthetic)")
            self.speakers = sorted(ESPEAK_VOICES)
            return
        if synthetic:
            self.origin = f"{speech_dir} + {_engines(synthetic)} ({len(synthetic)} voices)"
        root = Path(speech_dir)
        if not root.is_dir():
            raise ValueError(f"{root}: not a directory of FSDD-style wavs")
        for p in sorted(root.glob("*.wav")):
            m = FSDD_RE.match(p.name)
            if m:
                self._files.setdefault((m.group(2), int(m.group(1))), []).append(p)
        if synthetic:  # only they need it: a plain bank opens a wav when it draws it
            self.rate_hz = min(_wav_rate(p) for ps in self._files.values() for p in ps)
        names = {s for s, _ in self._files}
        # A speaker is usable only with takes of every digit.
        self.speakers = sorted(s for s in names if all((s, d) in self._files for d in range(10)))
        if not self.speakers:
            raise ValueError(f"{root}: no speaker with wavs of every digit named "
                             "{digit}_{speaker}_{n}.wav")

    def utterance(self, speaker: str, digit: int, rng: np.random.Generator) -> np.ndarray:
        if not self._files or speaker in self.synthetic_speakers:
            speed = int(rng.choice(ESPEAK_SPEEDS))
            pitch = int(rng.choice(ESPEAK_PITCHES))
            key: object = (speaker, digit, speed, pitch)
            if key not in self._cache:
                x = trim_silence(_synthesise(speaker, DIGIT_WORDS[digit], speed=speed,
                                             pitch=pitch))
                if self.rate_hz < RATE_HZ and not self._full_band:
                    x = resample(resample(x, RATE_HZ, self.rate_hz), self.rate_hz)
                self._cache[key] = x
            x = self._cache[key]
            # A few percent of tempo/pitch change on top of the discrete settings.
            return stretch(x, float(rng.uniform(0.92, 1.08)))
        files = self._files[(speaker, digit)]
        path = files[int(rng.integers(len(files)))]
        if path not in self._cache:
            x, rate = read_wav(path)
            self._cache[path] = trim_silence(resample(x, rate))
        return self._cache[path]


def _wav_rate(path: Path) -> int:
    try:
        with wave.open(str(path), "rb") as w:
            return w.getframerate()
    except (OSError, wave.Error, EOFError) as e:
        raise ValueError(f"{path}: cannot read wav: {e}") from None


def _engines(voices: Sequence[str]) -> str:
    names = {FLITE_PREFIX: "flite", ESPEAK_PREFIX: "espeak-ng"}
    return " + ".join(n for p, n in names.items() if any(v.startswith(p) for v in voices))


def _synthesise(speaker: str, text: str, *, speed: int, pitch: int) -> np.ndarray:
    """``text`` spoken by ``speaker``: ``flite:VOICE``, ``espeak:VOICE`` or a bare espeak-ng
    voice (every speaker of a bank without a speech directory)."""
    if speaker.startswith(FLITE_PREFIX):
        return flite(text, speaker.removeprefix(FLITE_PREFIX), speed=speed, pitch=pitch)
    return espeak(text, speaker.removeprefix(ESPEAK_PREFIX), speed=speed, pitch=pitch)


def flite(text: str, voice: str, *, speed: int, pitch: int) -> np.ndarray:
    """Synthesise ``text`` with flite and return 16 kHz float32 samples. ``speed`` in words
    per minute and ``pitch`` 0-99 as for espeak-ng: the duration is scaled about espeak-ng's
    middle speed, and the mean F0 set to 70 + 1.2 x pitch Hz (the diphone voice and awb
    follow it; rms and slt keep their own)."""
    if voice not in FLITE_VOICES:  # flite speaks an unknown voice as its default one
        raise ValueError(f"flite voice {voice!r} is not one of {', '.join(FLITE_VOICES)}")
    return _speak(["flite", "-voice", voice, "--setf", f"duration_stretch={165 / speed:.3f}",
                   "--setf", f"int_f0_target_mean={70 + 1.2 * pitch:.0f}", "-t", text,
                   "-o", "/dev/stdout"], voice, missing="flite is not installed (apt-get "
                  "install flite)")


def _speak(cmd: list[str], voice: str, *, missing: str) -> np.ndarray:
    """Run a synthesiser that writes a wav to stdout; 16 kHz float32 samples of it."""
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout
    except FileNotFoundError:
        raise RuntimeError(missing) from None
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{cmd[0]} failed for voice {voice!r}: "
                           f"{e.stderr.decode(errors='replace').strip()}") from None
    # Streaming writers put a bogus length in the header: read what is there.
    with wave.open(io.BytesIO(out), "rb") as w:
        rate, ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(1 << 30)
    return resample(_pcm_to_float(raw, ch, width), rate)


def espeak(text: str, voice: str, *, speed: int, pitch: int) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng and return 16 kHz float32 samples."""
    return _speak(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout",
                   text], voice, missing="espeak-ng is not installed (apt-get install "
                  "espeak-ng), or pass --speech DIR")


def stretch(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (tempo and pitch together), by interpolation."""
    n = max(2, int(round(len(x) / factor)))
    return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)


class NoiseBank:
    """Background sound: clips from a directory of wavs, or generated noise."""

    def __init__(self, noise_dir: str | None) -> None:
        self.origin = noise_dir or "generated"
        self.clips: list[np.ndarray] = []
        if noise_dir is None:
            return
        root = Path(noise_dir)
        if not root.is_dir():
            raise ValueError(f"{root}: not a directory of wavs")
        for p in sorted(root.glob("*.wav")):
            x, rate = read_wav(p)
            x = resample(x, rate)
            if len(x) >= RATE_HZ // 10 and float(np.std(x)) > 1e-4:
                self.clips.append(x / (float(np.sqrt(np.mean(x**2))) + 1e-9))
        if not self.clips:
            raise ValueError(f"{root}: no usable wav files")

    def background(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples of unit-RMS background sound."""
        if self.clips and rng.random() < 0.85:
            x = self._from_clips(n, rng)
            # Real rooms also have a noise floor under the events.
            x = x + 0.15 * generated_noise(n, rng, kind="white")
        else:
            x = generated_noise(n, rng)
        return (x / (float(np.sqrt(np.mean(x**2))) + 1e-9)).astype(np.float32)

    def _from_clips(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Clips laid end to end with random gaps from a random start (short clips repeat)."""
        out = np.zeros(n, np.float32)
        pos = -int(rng.integers(0, RATE_HZ))
        while pos < n:
            clip = self.clips[int(rng.integers(len(self.clips)))] * float(rng.uniform(0.5, 1.5))
            lo, hi = max(pos, 0), min(pos + len(clip), n)
            if hi > lo:
                out[lo:hi] += clip[lo - pos:hi - pos]
            pos += len(clip) + int(rng.integers(0, RATE_HZ // 2))
        return out


def generated_noise(n: int, rng: np.random.Generator, *, kind: str | None = None) -> np.ndarray:
    """Unit-RMS noise of one ``kind``: white, pink, brown, hum, babble or beeps."""
    kind = kind or str(rng.choice(["white", "pink", "brown", "hum", "babble", "beeps"]))
    t = np.arange(n, dtype=np.float32) / RATE_HZ
    if kind in ("white", "pink", "brown"):
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / RATE_HZ)
        f[0] = f[1] if n > 1 else 1.0
        spec *= {"white": 1.0, "pink": 1 / np.sqrt(f), "brown": 1 / f}[kind]
        x = np.fft.irfft(spec, n)
    elif kind == "hum":
        base = float(rng.choice([50.0, 60.0]))
        x = 0.1 * rng.standard_normal(n)
        for k in (1, 2, 3, 5):
            x = x + rng.uniform(0.2, 1.0) * np.sin(2 * math.pi * base * k * t + rng.uniform(0, 6.3))
    elif kind == "babble":
        # Band-limited noise with a slow syllable-rate envelope: like distant chatter.
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / RATE_HZ)
        spec *= np.exp(-((f - 600) / 500) ** 2)
        env = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6.3))
        x = np.fft.irfft(spec, n) * env
    elif kind == "beeps":
        x = 0.05 * rng.standard_normal(n)
        for _ in range(int(rng.integers(1, 4))):
            start = int(rng.integers(0, max(1, n - RATE_HZ // 5)))
            length = int(rng.integers(RATE_HZ // 20, RATE_HZ // 5))
            seg = slice(start, min(n, start + length))
            x[seg] += np.sin(2 * math.pi * rng.uniform(400, 3000) * t[seg])
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    x = np.asarray(x, np.float64)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def audible_span(speech: np.ndarray, *, floor_db: float = 30.0,
                 frame: int = RATE_HZ // 100) -> tuple[int, int]:
    """``[start, end)`` samples of ``speech`` from its first to its last 10 ms frame whose
    energy is within ``floor_db`` of the loudest frame: the spoken part of a recording
    with its leading and trailing silence left out. ``(0, 0)`` for silence."""
    n = len(speech) // frame
    if n == 0:
        return 0, 0
    energy = np.square(speech[: n * frame].astype(np.float64)).reshape(n, frame).mean(axis=1)
    peak = float(energy.max())
    if peak <= 0.0:
        return 0, 0
    loud = np.flatnonzero(energy >= peak * 10 ** (-floor_db / 10))
    return int(loud[0]) * frame, int(loud[-1] + 1) * frame


def mix(speech: np.ndarray, background: np.ndarray, *, offset: int, snr_db: float,
        level: float) -> np.ndarray:
    """``speech`` placed at sample ``offset`` over unit-RMS ``background`` at ``snr_db``.

    The SNR compares the speech's RMS over its own duration with the
    background's RMS; ``level`` is the speech RMS in the result (mic gain).
    """
    out = background * (level / (10 ** (snr_db / 20)))
    s = speech / (float(np.sqrt(np.mean(speech**2))) + 1e-9) * level
    end = min(len(out), offset + len(s))
    out[offset:end] += s[: end - offset]
    peak = float(np.max(np.abs(out)))
    if peak > 0.99:  # a real ADC would clip; scale instead so the digit stays intelligible
        out *= 0.99 / peak
    # A 16-bit ADC's resolution (as sound cards deliver float32); also compresses far better.
    return (np.round(out * 32768) / 32768).astype(np.float32)


def split_speakers(speakers: Sequence[str], fractions: Sequence[float],
                   rng: np.random.Generator) -> list[list[str]]:
    """Partition speakers into len(fractions) non-empty disjoint groups (needs enough
    speakers)."""
    order = [speakers[i] for i in rng.permutation(len(speakers))]
    k = len(fractions)
    if len(order) < k:
        raise ValueError(f"need at least {k} speakers to split, have {len(order)}")
    counts = [max(1, int(round(f * len(order)))) for f in fractions]
    while sum(counts) > len(order):
        counts[counts.index(max(counts))] -= 1
    counts[0] += len(order) - sum(counts)
    groups, pos = [], 0
    for c in counts:
        groups.append(sorted(order[pos:pos + c]))
        pos += c
    return groups
