"""Chat templates for instruct models, rendered as token ids.

Only the template's own markers are special tokens; the user's text and the system text are encoded
as plain text, so a prompt cannot forge a turn.
"""

from __future__ import annotations

from llmgen.errors import LLMGenError
from llmgen.tokenizers import Tokenizer


def chat_prompt_ids(tokenizer: Tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """One user turn (after an optional system turn), ending where the assistant's reply begins."""
    special = tokenizer.encoding.encode_single_token

    def text(s: str) -> list[int]:
        return tokenizer.encode(s, bos=False)

    messages = ([("system", system)] if system else []) + [("user", prompt)]
    if tokenizer.chat_format == "chatml":
        # <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
        ids = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        for role, content in messages:
            ids += [special("<|im_start|>"), *text(f"{role}\n{content}"), special("<|im_end|>"), *text("\n")]
        return ids + [special("<|im_start|>"), *text("assistant\n")]
    if tokenizer.chat_format == "llama3":
        # <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ...
        ids = [special("<|begin_of_text|>")]
        for role, content in [*messages, ("assistant", None)]:
            ids += [special("<|start_header_id|>"), *text(role), special("<|end_header_id|>"), *text("\n\n")]
            if content is not None:
                ids += [*text(content), special("<|eot_id|>")]
        return ids
    raise LLMGenError("this model has no chat template llmgen knows (ChatML or Llama 3); use --raw")
