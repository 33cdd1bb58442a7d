"""Reading generated text aloud with pyttsx3 (espeak-ng on Linux, NSSpeechSynthesizer on macOS, SAPI5 on
Windows), isolated in a child process.

pyttsx3 prints to stdout, can hang in runAndWait, and fails on machines without audio. The engine runs
in `python -m llmgen.speech` with its stdout pointed at /dev/null and a timeout, so none of that can
reach llmgen's stdout or lose text that was already printed. A WAV file appears atomically: the child
writes a temporary name in the target directory, the parent checks it is a real WAV and renames it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import wave
from pathlib import Path
from typing import Any

from llmgen.errors import LLMGenError, UsageError

RATE_SLOWER_BY = 50  # the seed speaks a little slower than the engine's default
FILE_ATTEMPTS = 3
WAV_HEADER_BYTES = 44
INSTALL_HINT = ("install a speech engine: `apt-get install espeak-ng` on Debian/Ubuntu (macOS and Windows "
                "have one built in) and `pip install pyttsx3`")
# ISO 639-1 codes people type -> the codes espeak-ng's voices carry.
LANGUAGE_ALIASES = {"zh": "cmn", "zh-cn": "cmn", "chinese": "cmn", "mandarin": "cmn", "english": "en"}


class SpeechError(LLMGenError):
    pass


def check_volume(volume: float) -> None:
    if not 0.0 <= volume <= 1.0:
        raise UsageError(f"--volume must be between 0.0 and 1.0, got {volume}")


def check_target(to_file: Path) -> None:
    """Before any text is generated: can a WAV file be created at `to_file`? (Tried for real: a directory's
    permission bits do not tell root, or a read-only mount, the whole story.)"""
    to_file = Path(to_file)
    if to_file.is_dir():
        raise SpeechError(f"cannot write speech to {to_file}: it is a directory")
    if not to_file.parent.is_dir():
        raise SpeechError(f"cannot write speech to {to_file}: directory {to_file.parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=to_file.parent, prefix=f".{to_file.stem}.", suffix=".wav")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SpeechError(f"cannot write speech to {to_file}: {e.strerror or e}") from None


def language_of(text: str) -> str:
    """'cmn' when the text is mostly CJK ideographs, else 'en' (enough to choose a voice)."""
    letters = [c for c in text if c.isalpha()]
    cjk = sum("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in letters)
    return "cmn" if letters and cjk * 2 >= len(letters) else "en"


def speech_timeout(text: str, playing: bool) -> float:
    if env := os.environ.get("LLMGEN_SPEECH_TIMEOUT"):
        return float(env)
    # Playing takes about as long as the speech itself (~15 characters a second at a slow rate).
    return 20 + len(text) / (5 if playing else 200)


def _run_worker(request: dict, timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, "-m", "llmgen.speech"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SpeechError(f"the speech engine did not finish within {timeout:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SpeechError(reason)
    return json.loads(lines[-1])


def list_voices() -> list[dict]:
    return _run_worker({"action": "voices"}, timeout=30)["voices"]


def speak(text: str, *, voice: str | None = None, rate: int | None = None, volume: float = 1.0,
          to_file: Path | None = None, play: bool = True) -> list[str]:
    """Speak `text` (play it, write it to a WAV file, or both). Returns warnings worth showing.

    Raises SpeechError when the engine is missing, fails or hangs.
    """
    check_volume(volume)
    request = {"action": "speak", "text": text, "voice": voice, "rate": rate, "volume": volume,
               "language": language_of(text), "play": play}
    if to_file is None:
        return _run_worker(request, speech_timeout(text, playing=True))["warnings"]
    to_file = Path(to_file)
    check_target(to_file)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=to_file.parent, prefix=f".{to_file.stem}.", suffix=".wav")
        os.close(fd)
        result = _run_worker({**request, "file": tmp}, speech_timeout(text, playing=play))
        _check_wav(Path(tmp))
        os.replace(tmp, to_file)
    except OSError as e:
        raise SpeechError(f"cannot write speech to {to_file}: {e.strerror or e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return result["warnings"]


def _check_wav(path: Path) -> None:
    try:
        with wave.open(str(path)) as w:
            if w.getnframes() == 0:
                raise SpeechError("the speech engine wrote an empty WAV file")
    except (wave.Error, EOFError, OSError) as e:
        raise SpeechError(f"the speech engine did not write a valid WAV file ({e})") from None


# --- the child process -------------------------------------------------------------------------------

def _choose_voice(voices, wanted: str | None, language: str) -> tuple[Any, list[str]]:
    """A voice by id, name or language code; else one for the text's language; else the default."""
    def languages(v) -> list[str]:
        return [(x.decode(errors="ignore") if isinstance(x, bytes) else str(x)).lstrip("\x05").lower()
                for x in (v.languages or [])]

    warnings: list[str] = []
    if wanted:
        key = LANGUAGE_ALIASES.get(wanted.lower(), wanted.lower())
        for v in voices:
            if key in (str(v.id).lower(), str(v.name).lower()) or key in languages(v):
                return v, warnings
        warnings.append(f"no voice matches {wanted!r} (see `llmgen voices`); choosing one for the text")
    for v in voices:
        if language in languages(v) or str(v.id).lower().endswith("/" + language):
            return v, warnings
    return None, warnings


def _fail_at_once(message: str) -> None:
    """pyttsx3's espeak driver reports a failed write (a full disk) from a ctypes callback, where Python
    only prints the exception and synthesis goes on, or hangs: end the worker with that one line instead."""
    sys.stderr.write(message.splitlines()[0][:300] + "\n")
    sys.stderr.flush()
    os._exit(1)


def _worker() -> int:
    sys.unraisablehook = lambda info: _fail_at_once(str(info.exc_value or info.err_msg))
    threading.excepthook = lambda info: _fail_at_once(str(info.exc_value))
    # Keep pyttsx3's prints ("Audio saved to ...") off the channel that carries our one JSON line.
    result_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    request = json.loads(sys.stdin.read())
    try:
        import pyttsx3

        engine = pyttsx3.init()
    except Exception as e:  # noqa: BLE001 - any failure to start the engine means "no usable engine"
        print(f"no speech engine ({type(e).__name__}: {e}); {INSTALL_HINT}", file=sys.stderr)
        return 1
    if request["action"] == "voices":
        voices = [{"id": str(v.id), "name": str(v.name),
                   "languages": [x.decode(errors="ignore") if isinstance(x, bytes) else str(x)
                                 for x in (v.languages or [])]} for v in engine.getProperty("voices")]
        os.write(result_fd, (json.dumps({"voices": voices}) + "\n").encode())
        return 0
    voice, warnings = _choose_voice(engine.getProperty("voices"), request["voice"], request["language"])
    if voice is not None:
        engine.setProperty("voice", voice.id)
    engine.setProperty("rate", request["rate"] or engine.getProperty("rate") - RATE_SLOWER_BY)
    engine.setProperty("volume", request["volume"])
    if request.get("file"):
        # pyttsx3's espeak driver writes the file from a synthesis callback that, in a fresh process,
        # sometimes never fires; synthesising again is cheap and has always worked.
        for _ in range(FILE_ATTEMPTS):
            engine.save_to_file(request["text"], request["file"])
            engine.runAndWait()
            if os.path.exists(request["file"]) and os.path.getsize(request["file"]) > WAV_HEADER_BYTES:
                break
    if request["play"]:
        if sys.platform.startswith("linux") and shutil.which("aplay") is None:
            # pyttsx3 plays through aplay on Linux and silently does nothing without it.
            print("no audio player: install alsa-utils (aplay) and an audio device, or use --speak-to FILE.wav",
                  file=sys.stderr)
            return 1
        engine.say(request["text"])
        engine.runAndWait()
    os.write(result_fd, (json.dumps({"warnings": warnings}) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
