"""`llmgen perplexity`: a model's perplexity on a text file, by llama-perplexity's method (perplexity.py),
and with --reference the KL divergence and top-1 agreement of the model against another one (a
quantization against its float original) on the same chunks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from llmgen.cli import console
from llmgen.errors import UsageError


def perplexity(
    model: str = typer.Argument(..., help="A .gguf file, model directory, or 'default' (the embedded model)."),
    text_file: Path = typer.Argument(..., metavar="FILE", help="A UTF-8 text file ('-': stdin)."),
    n_ctx: int = typer.Option(512, "--ctx-size", "-c", help="Tokens per chunk; the second half of each is scored."),
    batch_size: int = typer.Option(512, "--batch-size", "-b", help="Most tokens in one forward pass."),
    chunks: Optional[int] = typer.Option(None, "--chunks", help="Score only the first N chunks."),
    reference: Optional[str] = typer.Option(
        None, "--reference", help="A reference model of the same vocabulary, loaded as floats (a GGUF's blocks "
                                  "dequantized): also report the mean KL divergence from it and how often the top "
                                  "token agrees."),
    quantize: str = typer.Option("auto", "--quantize", "-q", help="auto, none, int8 or int4 (see generate)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end instead of text."),
) -> None:
    """Perplexity of a text, as llama-perplexity computes it (and KL divergence against --reference)."""
    from llmgen.cli.model_path import resolve_model
    from llmgen.cli.text_input import read_text_file

    if n_ctx < 8 or batch_size < 1 or (chunks is not None and chunks < 1):
        raise UsageError("-c takes 8 or more, -b and --chunks 1 or more")
    text = read_text_file(str(text_file), "the text file")
    from llmgen import perplexity as method
    from llmgen.decode import choose_decoder
    from llmgen.loading import load_model
    from llmgen.speculative import check_same_vocabulary

    path, _ = resolve_model(model)
    with console.status(f"loading {path.name}"):
        loaded = load_model(path, quantize=quantize, cache_quantized=True)
    tokenizer = loaded.tokenizer
    _exact_head(loaded.model)
    if n_ctx > loaded.config.context_length:
        raise UsageError(f"-c {n_ctx} is more than the model's window of {loaded.config.context_length}")
    reference_decoder = None
    if reference is not None:
        reference_path, _ = resolve_model(reference)
        with console.status(f"loading {reference_path.name}"):
            base = load_model(reference_path, quantize="none")  # as floats: a GGUF's blocks dequantized
        check_same_vocabulary(tokenizer, base.tokenizer)
        reference_decoder = choose_decoder(base.model)
    ids = tokenizer.encode(text, bos=False)
    method.chunks(ids, n_ctx, tokenizer.bos_id)  # too short a text: the error before anything else
    decoder = choose_decoder(loaded.model)
    if not as_json:
        console.print_info(f"{len(ids)} tokens; chunks of {n_ctx}, the last {n_ctx - n_ctx // 2 - 1} of each scored; "
                           f"{decoder.name}")
    scores = None
    for index, scores in enumerate(method.score(decoder, ids, n_ctx, tokenizer.bos_id, batch_size, reference_decoder,
                                                n_valid=tokenizer.n_vocab), start=1):
        if not as_json:
            console.write(f"[{index}]{scores.ppl:.4f},")
        if chunks is not None and index >= chunks:
            break
    assert scores is not None  # score() raises when there is no whole chunk
    result = {"model": str(path), "tokens": len(ids), "ctx_size": n_ctx, "chunks": len(scores.chunk_ppl),
              "scored_tokens": scores.count, "ppl": scores.ppl, "ppl_error": scores.ppl_error}
    if reference_decoder is not None:
        result |= {"reference": reference, "mean_kld": scores.mean_kld, "kld_error": scores.kld_error,
                   "top1_agreement": scores.top1_agreement}
    if as_json:
        console.write(json.dumps(result) + "\n")
        return
    console.write(f"\nFinal estimate: PPL = {scores.ppl:.4f} +/- {scores.ppl_error:.5f}\n")
    if reference_decoder is not None:
        agreement, n = scores.top1_agreement, scores.count
        console.write(f"Mean KLD: {scores.mean_kld:.6f} ± {scores.kld_error:.6f}\n"
                      f"Same top token: {100 * agreement:.3f} ± {100 * (agreement * (1 - agreement) / n) ** 0.5:.3f} %\n")


def _exact_head(model) -> None:
    """Every logit from the weights as stored, not the decoding head's 4-bit first pass (heads.exact_head)."""
    from llmgen.quantization.heads import exact_head

    if (exact := exact_head(getattr(model, "output", None))) is not None:
        model.output = exact

