"""Speech: real WAV files from the real engine, and generation output that speech can never damage."""

import array
import json
import math
import shutil
import wave

import pytest
from conftest import assert_one_line_error, run_llmgen

from llmgen.speech import SpeechError, language_of, list_voices, speak

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                                 reason="espeak-ng is not installed (make test installs it)")]

ENGLISH_SHORT = "Hello world."
ENGLISH_LONG = "Hello world. This is a much longer sentence that the speech engine has to read out loud, slowly."
CHINESE = "武汉是一座历史悠久的城市。"


def wav_facts(path):
    with wave.open(str(path)) as w:
        frames = w.readframes(w.getnframes())
        samples = array.array("h", frames)
        rms = math.sqrt(sum(s * s for s in samples) / max(len(samples), 1))
        return {"channels": w.getnchannels(), "width": w.getsampwidth(), "rate": w.getframerate(),
                "seconds": w.getnframes() / w.getframerate(), "rms": rms}


@pytest.mark.parametrize("text", [ENGLISH_SHORT, CHINESE])
def test_writes_a_valid_audible_wav(tmp_path, text):
    out = tmp_path / "speech.wav"
    speak(text, to_file=out, play=False)
    facts = wav_facts(out)
    assert facts["channels"] == 1 and facts["width"] == 2 and facts["rate"] == 22050
    assert facts["seconds"] > 0.3
    assert facts["rms"] > 200  # not silence
    assert [p.name for p in tmp_path.iterdir()] == ["speech.wav"]  # no temporary file left


def test_duration_grows_with_text_length(tmp_path):
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    speak(ENGLISH_SHORT, to_file=short, play=False)
    speak(ENGLISH_LONG, to_file=long, play=False)
    ratio = wav_facts(long)["seconds"] / wav_facts(short)["seconds"]
    chars = len(ENGLISH_LONG) / len(ENGLISH_SHORT)
    assert chars / 3 < ratio < chars * 1.5


def test_chinese_text_gets_a_chinese_voice():
    assert language_of(CHINESE) == "cmn" and language_of(ENGLISH_LONG) == "en"
    voices = list_voices()
    assert any("cmn" in " ".join(v["languages"]) for v in voices)


def test_rate_changes_duration(tmp_path):
    slow, fast = tmp_path / "slow.wav", tmp_path / "fast.wav"
    speak(ENGLISH_LONG, to_file=slow, play=False, rate=100)
    speak(ENGLISH_LONG, to_file=fast, play=False, rate=300)
    assert wav_facts(slow)["seconds"] > 1.5 * wav_facts(fast)["seconds"]


def test_unknown_voice_warns_and_still_speaks(tmp_path):
    warnings = speak(ENGLISH_SHORT, to_file=tmp_path / "x.wav", play=False, voice="no-such-voice-xyz")
    assert warnings and "no-such-voice-xyz" in warnings[0]
    assert wav_facts(tmp_path / "x.wav")["seconds"] > 0.3


def test_bad_target_directory():
    with pytest.raises(SpeechError, match="does not exist"):
        speak(ENGLISH_SHORT, to_file="/nonexistent/dir/x.wav", play=False)


# --- through the CLI, on the embedded default model ---------------------------------------------------

def test_pipeline_stdout_holds_only_the_text(tmp_path):
    plain = run_llmgen("generate", "武", "--max-new-tokens", "5", "--seed", "0")
    spoken = run_llmgen("generate", "武", "--max-new-tokens", "5", "--seed", "0", "--speak-to", tmp_path / "out.wav")
    assert spoken.returncode == 0, spoken.err
    assert spoken.out == plain.out and spoken.out.strip()
    assert "Audio saved" not in spoken.out + spoken.err
    assert wav_facts(tmp_path / "out.wav")["seconds"] > 0.3


def test_missing_engine_keeps_text_and_exit_code(tmp_path):
    # A pyttsx3 that cannot be imported, as on a machine without it.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pyttsx3.py").write_text("raise ImportError('No module named pyttsx3')\n")
    env = {"PYTHONPATH": str(shadow)}
    plain = run_llmgen("generate", "hello", "-n", "4", "--seed", "1")
    spoken = run_llmgen("generate", "hello", "-n", "4", "--seed", "1", "--speak", env=env)
    assert spoken.returncode == 0 and spoken.out == plain.out
    assert spoken.err.count("\n") == 1 and spoken.err.startswith("warning: could not speak")
    assert "apt-get install espeak-ng" in spoken.err
    # --speak-to that cannot be written is an error, but the text is still all there.
    to_file = run_llmgen("generate", "hello", "-n", "4", "--seed", "1", "--speak-to", tmp_path / "x.wav", env=env)
    assert to_file.out == plain.out
    assert_one_line_error(to_file, "could not write speech to")
    assert not (tmp_path / "x.wav").exists()


def test_hung_engine_times_out_and_keeps_text():
    plain = run_llmgen("generate", "hello", "-n", "4", "--seed", "2")
    spoken = run_llmgen("generate", "hello", "-n", "4", "--seed", "2", "--speak",
                        env={"LLMGEN_SPEECH_TIMEOUT": "0.01"})
    assert spoken.returncode == 0 and spoken.out == plain.out
    assert "did not finish" in spoken.err


def test_json_and_voices_command():
    result = run_llmgen("voices", "--json", "-l", "cmn")
    assert result.returncode == 0 and any(v["id"].endswith("cmn") for v in json.loads(result.out))
    plain = run_llmgen("voices", "-l", "cmn")  # on a pipe: tab-separated lines, no box table
    rows = [line.split("\t") for line in plain.out.splitlines()]
    assert rows[0] == ["id", "name", "languages"] and all(len(row) == 3 for row in rows)
    assert {v["id"] for v in json.loads(result.out)} == {row[0] for row in rows[1:]}
    assert_one_line_error(run_llmgen("generate", "hi", "--volume", "2"), "--volume must be between")
