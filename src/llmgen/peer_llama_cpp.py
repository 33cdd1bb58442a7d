"""`llmgen bench --peer llama.cpp`'s worker, run in a process of its own (llama.cpp builds that crash, such as
the stock one on AMX CPUs, then fail that process alone): the same tests through llama-cpp-python.

    python -m llmgen.peer_llama_cpp MODEL THREADS BATCH_SIZE REPETITIONS N_PROMPT N_GEN

prints {"samples": [tokens per second, ...], "system": llama.cpp's system info} as JSON. Random token ids, a
warm-up run first, a cleared cache each repetition: as benchmarking.py measures llmgen.
"""

from __future__ import annotations

import json
import random
import sys
import time


def main(argv: list[str]) -> int:
    from llama_cpp import Llama, llama_print_system_info

    path, threads, batch_size, repetitions, n_prompt, n_gen = argv[0], *map(int, argv[1:6])
    llm = Llama(path, n_ctx=max(n_prompt + n_gen, 16), n_threads=threads, n_threads_batch=threads,
                n_batch=batch_size, n_ubatch=batch_size, verbose=False)
    vocab = llm.n_vocab()

    def once(seed: int) -> float:
        rng = random.Random(seed)
        llm.reset()
        if n_prompt:
            tokens = [rng.randrange(vocab) for _ in range(n_prompt)]
            start = time.perf_counter()
            llm.eval(tokens)
            return n_prompt / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([rng.randrange(vocab)])
        return n_gen / (time.perf_counter() - start)

    once(0)
    samples = [once(seed) for seed in range(1, repetitions + 1)]
    print(json.dumps({"samples": samples, "system": llama_print_system_info().decode(errors="replace")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
