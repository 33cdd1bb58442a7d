"""A tensor-parallel rank for tests/parallel/test_tensor_parallel.py, or one process when not under torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/support/tp_worker.py OUT DEVICE MODEL...

For each model: the full forward's logits on a prompt of English, Chinese and digits, 32 greedy ids
(generate_ids with rank 0's token agreed), the rank's parameter bytes and its decoder. Each rank writes
OUT/rank{R}.json; one process writes OUT/rank0.json.
"""

import json
import os
import sys
from pathlib import Path

import torch

from llmgen.decode import choose_decoder
from llmgen.generation import SamplingSettings, generate_ids
from llmgen.loading import load_model

PROMPT = "The year 2024 in 北京 had 366 days, and"


def parameter_bytes(model: torch.nn.Module) -> int:
    tensors = {t.data_ptr(): t for t in (*model.parameters(), *model.buffers()) if t.device.type != "meta"}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def main(out: Path, device: str, models: list[str]) -> None:
    tensor_parallel = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from llmgen.parallel import group

        tensor_parallel = group.start(device)
        device = tensor_parallel.device
    results = {}
    for path in models:
        loaded = load_model(Path(path), device=device, tensor_parallel=tensor_parallel)
        model, ids = loaded.model, loaded.tokenizer.encode(PROMPT)
        with torch.inference_mode():
            model.setup_cache(1, 64)
            logits = model(torch.tensor([ids], device=device))[0]  # (T, vocab)
        decoder = choose_decoder(model)
        steps = []  # each decode step's 5 largest logits, for quantized models (see the test)
        greedy = list(generate_ids(model, ids, SamplingSettings(32, 0.0), decoder=decoder,
                                   agree=tensor_parallel and tensor_parallel.first_rank_token,
                                   on_logits=lambda step, steps=steps: steps.append(step.topk(5).values.tolist())))
        results[path] = {"prompt_ids": ids, "logits": logits.cpu().tolist(), "greedy": greedy, "steps": steps,
                         "parameter_bytes": parameter_bytes(model), "decoder": repr(decoder)}
    rank = 0 if tensor_parallel is None else tensor_parallel.rank
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    if tensor_parallel is not None:
        tensor_parallel.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
