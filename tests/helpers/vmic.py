"""A real microphone for tests: a private PulseAudio null sink exposed as ALSA device ``vmic``.

Whatever is played into the sink comes out of the ``vmic`` source sample for sample,
on the audio clock, exactly like a live microphone. The server runs
under a temporary directory, owned by the test, and is stopped by PID.

Usage::

    from tests.helpers.vmic import VirtualMic, pulseaudio_missing
    from tests.helpers import media

    @pytest.mark.skipif(pulseaudio_missing(), reason=pulseaudio_missing() or "")
    def test_audio(tmp_path, broker):
        wav = media.speech_wav(tmp_path / "speech.wav", "seven three one")
        with VirtualMic(tmp_path / "pa") as mic:
            cap = streamfuse(["capture", "audio", "--source", "room1", "--config", ...],
                             env=mic.env)          # the child sees device "vmic"
            player = mic.play(wav, loop=True)      # a Popen; stop it with stop_player()
            ...
            mic.stop_player(player)
            stop(cap)

Config for the capture: ``[sources.audio] device = "vmic"`` (or ``"default"``, which
PulseAudio maps to the vmic source). ``mic.env`` holds ``XDG_RUNTIME_DIR``, ``HOME``
(with the ``.asoundrc`` defining ``pcm.vmic``) and ``PULSE_SERVER``; PortAudio reads
its device list when ``sounddevice`` is imported, so pass them to a child process
rather than setting them in the test process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

DEVICE = "vmic"
SINK = "vmic_sink"


def pulseaudio_missing() -> str | None:
    """Why a virtual microphone cannot run here, or None when it can."""
    for tool in ("pulseaudio", "pactl", "paplay", "sox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install pulseaudio pulseaudio-utils sox)"
    try:
        import sounddevice  # noqa: F401
    except OSError as e:  # libportaudio2 missing
        return f"sounddevice cannot load PortAudio: {e}"
    return None


class VirtualMic:
    """A private PulseAudio server with a null sink ``vmic_sink`` and a source ``vmic``.

    ``root``: a directory of its own (created); ``rate``/``channels``: the sink's format.
    Start with ``with VirtualMic(root) as mic:`` or :meth:`start`/:meth:`stop`.
    """

    def __init__(self, root: Path, *, rate: int = 16000, channels: int = 1) -> None:
        self.root = Path(root)
        self.rate = rate
        self.channels = channels
        xdg = self.root / "xdg"
        home = self.root / "home"
        self.socket = xdg / "pulse" / "native"
        self.env: dict[str, str] = {
            "XDG_RUNTIME_DIR": str(xdg),
            "HOME": str(home),
            "PULSE_SERVER": f"unix:{self.socket}",
        }
        self.proc: subprocess.Popen | None = None
        self._players: list[subprocess.Popen] = []

    def _full_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self, timeout: float = 10.0) -> VirtualMic:
        xdg = Path(self.env["XDG_RUNTIME_DIR"])
        home = Path(self.env["HOME"])
        (xdg / "pulse").mkdir(parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        xdg.chmod(0o700)
        (home / ".asoundrc").write_text(
            f'pcm.{DEVICE} {{ type pulse device "{DEVICE}" }}\nctl.{DEVICE} {{ type pulse }}\n')
        log = open(self.root / "pulseaudio.log", "wb")  # noqa: SIM115 - closed below
        try:
            self.proc = subprocess.Popen(
                ["pulseaudio", "--daemonize=no", "-n", "--exit-idle-time=-1", "--disable-shm=yes",
                 "-L", f"module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
                 "-L", f"module-null-sink sink_name={SINK} rate={self.rate} channels={self.channels}",
                 "-L", f"module-remap-source source_name={DEVICE} master={SINK}.monitor"],
                env=self._full_env(), stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._pactl("info"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.root / "pulseaudio.log").read_text(errors="replace")[-500:]
                self.stop()
                raise RuntimeError(f"pulseaudio did not start: {tail}")
            time.sleep(0.05)
        self._pactl("set-default-source", DEVICE)
        self._pactl("set-default-sink", SINK)
        return self

    def _pactl(self, *args: str) -> bool:
        r = subprocess.run(["pactl", *args], env=self._full_env(), capture_output=True, timeout=10)
        return r.returncode == 0

    def play(self, wav_path: str | Path, loop: bool = False, *, loop_s: float = 120.0) -> subprocess.Popen:
        """Play a wav into the sink (so it comes out of ``vmic``); returns the paplay Popen.

        ``loop=True`` plays the file repeated for about ``loop_s`` seconds (one paplay
        process, so stopping it by PID stops the sound). Stop with :meth:`stop_player`;
        :meth:`stop` stops any still playing.
        """
        wav = Path(wav_path)
        if loop:
            import wave

            with wave.open(str(wav), "rb") as w:
                dur = w.getnframes() / w.getframerate()
            repeats = max(1, int(loop_s / max(dur, 0.01)))
            looped = self.root / f"loop-{wav.stem}.wav"
            subprocess.run(["sox", str(wav), str(looped), "repeat", str(repeats)], check=True,
                           capture_output=True, timeout=60)
            wav = looped
        p = subprocess.Popen(["paplay", f"--device={SINK}", str(wav)], env=self._full_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._players.append(p)
        return p

    @staticmethod
    def stop_player(p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop(self) -> None:
        """Stop players, then the server (SIGTERM, wait, SIGKILL), by PID."""
        for p in self._players:
            self.stop_player(p)
        self._players.clear()
        if self.proc is not None:
            self.stop_player(self.proc)
            self.proc = None

    def __enter__(self) -> VirtualMic:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
