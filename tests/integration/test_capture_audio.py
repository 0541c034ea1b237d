"""Audio capture from a real PulseAudio virtual microphone playing espeak-ng speech."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamfuse.wire import codec
from streamfuse.wire.schema import Message
from streamfuse.wire.sockets import connect_sub
from tests.helpers import media
from tests.helpers.proc import run_streamfuse, stop, streamfuse, wait_for
from tests.helpers.vmic import VirtualMic, pulseaudio_missing

MISSING = pulseaudio_missing() or media.espeak_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.mark.slow
def test_virtual_microphone_speech_arrives_intact_with_continuous_timestamps(broker, tmp_path: Path) -> None:
    wav = media.speech_wav(tmp_path / "speech.wav", "seven three one", rate=16000)
    reference, rate = media.read_wav(wav)
    assert rate == 16000
    broker.write('[[sources]]\nname = "room1"\n[sources.audio]\ndevice = "vmic"\nsamplerate = 16000\n'
                 'channels = 1\nblock_ms = 20\n')
    with VirtualMic(tmp_path / "pulse") as mic, zmq.Context() as ctx:
        sub = connect_sub(ctx, broker.cfg.bus, ["room1/audio"])
        got: list[Message] = []

        def pump() -> int:
            while sub.poll(20):
                got.append(codec.decode(sub.recv_multipart()))
            return len(got)

        proc = streamfuse(["capture", "audio", "--source", "room1", "--config", str(broker.path)],
                          env=mic.env, stderr=subprocess.PIPE, text=True)
        player = None
        try:
            # The first block can take a second or more (PulseAudio starting): wait on data.
            wait_for(pump, timeout=20, what="first audio block")
            player = mic.play(wav, loop=True)
            start = len(got)
            n_ref_blocks = len(reference) // 320
            wait_for(lambda: pump() >= start + 2 * n_ref_blocks + 50, timeout=30,
                     what="two plays of the speech")
        finally:
            if player is not None:
                mic.stop_player(player)
            sub.close()
            # SIGTERM, then SIGKILL after 30 s (a ceiling against a hang, not a timing):
            # exit code 0 means it stopped on SIGTERM by itself
            rc = stop(proc, timeout=30)
        log = proc.stderr.read()
        devices = run_streamfuse(["devices"], env=mic.env)
    assert rc == 0, (rc, log)

    blocks = [m for m in got if m.kind == "audio"]
    assert all(m.header.frames == 320 and m.header.samplerate == 16000 and m.header.channels == 1
               for m in blocks)
    seq = [m.header.seq for m in blocks]
    assert seq == list(range(seq[0], seq[0] + len(seq))), "blocks lost on the bus"
    # Consecutive blocks advance by block_ms (20 ms) within 2 ms.
    steps_ms = np.diff([m.t_ns for m in blocks]) / 1e6
    assert np.all(np.abs(steps_ms - 20.0) <= 2.0), (steps_ms.min(), steps_ms.max())
    # What arrived is what was played.
    recorded = np.concatenate([m.array()[:, 0] for m in blocks[start:]])
    corr = media.best_correlation(recorded, reference[:, 0])
    assert corr >= 0.9, f"normalised cross-correlation {corr:.3f}"
    print(f"correlation {corr:.4f}, steps {steps_ms.min():.3f}..{steps_ms.max():.3f} ms")
    assert "audio room1 stopped: grabbed=" in log, log

    # `streamfuse devices` sees the virtual microphone as a PortAudio input.
    assert devices.returncode == 0
    assert "vmic" in devices.stdout and "no cameras found" in devices.stdout
