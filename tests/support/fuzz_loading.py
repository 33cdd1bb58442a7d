"""Mutation fuzzing of what llmgen reads from checkpoint files: GGUF headers, safetensors headers, and the
values of params.json / config.json. Run as a script in a fresh process (so its peak RSS is its own):

    python tests/support/fuzz_loading.py gguf|safetensors|config COUNT WORKDIR [SEED]

Each mutated input goes through the real loader; the only acceptable outcomes are a loaded model or an
LLMGenError. Prints one JSON line: counts, the crashes (uncaught exceptions) and hangs (over 10 s) seen,
the slowest input, and how far the peak RSS grew over the first load.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import struct
import sys
import time
import traceback
from pathlib import Path

HANG_SECONDS = 10
HOSTILE_VALUES = [0, -1, 1, 3, 2**31, 2**32 + 1, 2**63, 10**30, 1e9, 1e308, -1e-5, 0.5, float("nan"), float("inf"),
                  "x", "", "64", None, True, False, [], [1, 2], {}, {"a": 1}, "../../etc/passwd"]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- seeds and mutators --------------------------------------------------------------------------------

def gguf_seed(workdir: Path) -> tuple[Path, bytes, int]:
    import gguf
    from gguf_files import write_tiny_gguf

    path = workdir / "seed.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType.Q4_0, tokenizer=True)
    data = path.read_bytes()
    from llmgen.weights.gguf_file import GGUFFile

    header_end = GGUFFile(path)._pos  # metadata and tensor table end here
    return path, data, header_end


def mutate_gguf(rng: random.Random, data: bytes, header_end: int) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(header_end)
        choice = rng.random()
        if choice < 0.5:
            out[position] = rng.randrange(256)
        elif choice < 0.8:  # an integer field (a count, a length, a dimension, a type) set to an extreme
            width = rng.choice((4, 8))
            value = rng.choice((0, 1, 2**31 - 1, 2**32 - 1, 2**63, 2**64 - 1, rng.randrange(2**16)))
            out[position:position + width] = struct.pack("<Q", value % 2**64)[:width]
        else:
            out[position] ^= 0xFF
    return bytes(out[:len(data)])


def safetensors_seed(workdir: Path) -> tuple[Path, bytes]:
    from checkpoints import hf_llama, save_hf

    directory = save_hf(hf_llama(), workdir / "hf")
    return directory, (directory / "model.safetensors").read_bytes()


def mutate_safetensors(rng: random.Random, data: bytes) -> bytes:
    (n,) = struct.unpack_from("<Q", data)
    header, body = data[8:8 + n], data[8 + n:]
    if rng.random() < 0.4:  # raw bytes of the header, its length prefix included
        raw = bytearray(data[:8 + n])
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw) + body
    table = json.loads(header)
    names = [k for k in table if k != "__metadata__"]
    name = rng.choice(names)
    entry = table[name]
    field = rng.choice(["dtype", "shape", "data_offsets", "entry", "name", "duplicate", "drop"])
    if field == "dtype":
        entry["dtype"] = rng.choice(["F64", "I8", "BOOL", "U8", "F8_E4M3", "C64", "X", 3, None, "BF16", "I32", "U32"])
    elif field == "shape":
        entry["shape"] = rng.choice([[], [0], [2**40, 2**40], [-1], [64, 64, 64, 64, 64], ["a"],
                                     [entry["shape"][0]], list(reversed(entry["shape"])), [2**63]])
    elif field == "data_offsets":
        start, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[end, start], [0, 2**62], [start, start], [start + 1, end],
                                            [-4, end], [start], "x"])
    elif field == "entry":
        table[name] = rng.choice(HOSTILE_VALUES)
    elif field == "name":
        table[rng.choice(["", "model.layers.99.mlp.up_proj.weight", "lm_head.weight.x", "\u0000"])] = \
            table.pop(name)
    elif field == "duplicate":
        other = rng.choice(names)
        table[other] = dict(entry) if isinstance(entry, dict) else entry
    else:
        del table[name]
    encoded = json.dumps(table).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


def config_seeds(workdir: Path) -> list[tuple[Path, str, dict]]:
    from checkpoints import hf_family, hf_llama, save_hf, save_meta

    hf = save_hf(hf_llama(), workdir / "hf-config")
    meta = save_meta(hf_llama(intermediate_size=192), workdir / "meta-config")
    # The other families' config.json readers too: Phi-3's longrope and partial RoPE (6 of each head's 8
    # pairs), Gemma 3's layer types and RoPE, sliding windows.
    longrope = {"rope_type": "longrope", "short_factor": [1.0] * 6, "long_factor": [2.0] * 6,
                "original_max_position_embeddings": 64, "rope_theta": 10000.0, "partial_rotary_factor": 0.75}
    families = [save_hf(hf_family("phi3", max_position_embeddings=256, original_max_position_embeddings=64,
                                  rope_parameters=longrope, rope_scaling=longrope), workdir / "phi3-config"),
                save_hf(hf_family("gemma3"), workdir / "gemma3-config"),
                save_hf(hf_family("qwen2-swa"), workdir / "qwen2-config")]
    return [(d, "config.json", json.loads((d / "config.json").read_text())) for d in (hf, *families)] + [
        (meta, "params.json", json.loads((meta / "params.json").read_text()))]


def mutate_config(rng: random.Random, config: dict) -> str:
    config = json.loads(json.dumps(config))
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(config) + ["rope_scaling", "head_dim", "ffn_dim_multiplier", "use_scaled_rope",
                                         "rope_parameters", "sliding_window", "use_sliding_window", "model_type"])
        action = rng.random()
        if action < 0.75:
            config[key] = rng.choice(HOSTILE_VALUES)
        elif action < 0.9:
            config.pop(key, None)
        else:
            config[key] = {"rope_type": "llama3", "factor": rng.choice(HOSTILE_VALUES),
                           "low_freq_factor": rng.choice(HOSTILE_VALUES), "high_freq_factor": 4.0,
                           "original_max_position_embeddings": rng.choice(HOSTILE_VALUES)}
    text = json.dumps(config)  # NaN and Infinity as Python writes them: JSON readers meet them in the wild
    if rng.random() < 0.1:
        text = text[:rng.randrange(len(text))]
    return text


# --- the loop -------------------------------------------------------------------------------------------

def run(kind: str, count: int, workdir: Path, seed: str = "") -> dict:
    from llmgen.errors import LLMGenError
    from llmgen.loading import load_model, load_weights

    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"llmgen-{kind}{seed}")
    if kind == "gguf":
        seed_path, seed, header_end = gguf_seed(workdir)
        target = workdir / "mutated.gguf"
        load = lambda: load_model(target)  # noqa: E731 - the whole path: config, tensors, tokenizer
        make = lambda: target.write_bytes(mutate_gguf(rng, seed, header_end))  # noqa: E731
        load_model(seed_path)
    elif kind == "safetensors":
        directory, seed = safetensors_seed(workdir)
        target = directory / "model.safetensors"
        load = lambda: load_weights(directory)  # noqa: E731
        make = lambda: target.write_bytes(mutate_safetensors(rng, seed))  # noqa: E731
        load_weights(directory)
    elif kind == "config":
        seeds = config_seeds(workdir)
        current = {}

        def make():
            directory, name, config = seeds[rng.randrange(len(seeds))]
            (directory / name).write_text(mutate_config(rng, config))
            current["directory"] = directory

        load = lambda: load_weights(current["directory"])  # noqa: E731
        for directory, _, _ in seeds:
            load_weights(directory)
    else:
        raise SystemExit(f"unknown kind {kind}")

    baseline = peak_rss_mb()
    signal.signal(signal.SIGALRM, _alarm)
    result = {"kind": kind, "count": count, "loaded": 0, "refused": 0, "crashes": [], "hangs": 0, "slowest_s": 0.0}
    for i in range(count):
        make()
        started = time.monotonic()
        signal.alarm(HANG_SECONDS)
        try:
            load()
            result["loaded"] += 1
        except LLMGenError:
            result["refused"] += 1
        except Hang:
            result["hangs"] += 1
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer looks for
            if len(result["crashes"]) < 5:
                where = traceback.extract_tb(e.__traceback__)[-1]
                result["crashes"].append(f"#{i} {type(e).__name__}: {str(e)[:120]} at {where.filename}:{where.lineno}")
            else:
                result["crashes"].append(f"#{i} {type(e).__name__}")
        finally:
            signal.alarm(0)
        result["slowest_s"] = max(result["slowest_s"], round(time.monotonic() - started, 3))
    result["rss_growth_mb"] = round(peak_rss_mb() - baseline, 1)
    return result


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:5])))
