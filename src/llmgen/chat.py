"""Chat templates for instruct models, rendered as token ids, and conversations that keep their KV cache.

Only the template's own markers are special tokens; the user's text and the system text are encoded
as plain text, so a prompt cannot forge a turn.

A Conversation holds every token of a chat so far, and the model's KV cache holds all of them but the
last: each turn prefills only its new tokens (the end of the previous reply, the user's message, the
assistant's header) after the ones already cached, then decodes the reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from llmgen.errors import LLMGenError
from llmgen.tokenization.tokenizer import Tokenizer

CACHE_STEP = 1024  # a conversation's KV cache grows in steps of this many positions
NO_TEMPLATE = "this model has no chat template (none in its files, and not ChatML or Llama 3)"


def message_ids(tokenizer: Tokenizer, role: str, content: str) -> list[int]:
    """One whole message, its end marker included."""
    special, text = tokenizer.encoding.encode_single_token, lambda s: tokenizer.encode(s, bos=False)
    if tokenizer.chat_format == "chatml":  # <|im_start|>role\ncontent<|im_end|>\n
        return [special("<|im_start|>"), *text(f"{role}\n{content}"), special("<|im_end|>"), *text("\n")]
    if tokenizer.chat_format == "llama3":  # <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
        return [*header_ids(tokenizer, role), *text(content), special("<|eot_id|>")]
    raise LLMGenError(f"{NO_TEMPLATE}; use --raw")


def header_ids(tokenizer: Tokenizer, role: str) -> list[int]:
    """The start of a message, up to where its content begins (for the assistant: where the reply begins)."""
    special, text = tokenizer.encoding.encode_single_token, lambda s: tokenizer.encode(s, bos=False)
    if tokenizer.chat_format == "chatml":
        return [special("<|im_start|>"), *text(f"{role}\n")]
    if tokenizer.chat_format == "llama3":
        return [special("<|start_header_id|>"), *text(role), special("<|end_header_id|>"), *text("\n\n")]
    raise LLMGenError(f"{NO_TEMPLATE}; use --raw")


def start_ids(tokenizer: Tokenizer) -> list[int]:
    """What a conversation begins with: BOS (<|begin_of_text|> for Llama 3) where the model has one."""
    if tokenizer.chat_format == "llama3":
        return [tokenizer.encoding.encode_single_token("<|begin_of_text|>")]
    return [] if tokenizer.bos_id is None else [tokenizer.bos_id]


def chat_prompt_ids(tokenizer: Tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """One user turn (after an optional system turn), ending where the assistant's reply begins: through
    the model's own chat template when it ships one, else the ChatML or Llama 3 format it uses."""
    if tokenizer.chat_template:
        from llmgen.chat_template import template_ids

        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return template_ids(tokenizer, messages)
    ids = start_ids(tokenizer) + (message_ids(tokenizer, "system", system) if system else [])
    return ids + message_ids(tokenizer, "user", prompt) + header_ids(tokenizer, "assistant")


def conversation_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Any role/content messages (system, user and assistant turns, as an OpenAI chat request holds them),
    ending where the next assistant reply begins: through the model's template, else ChatML's or Llama 3's.
    Roles other than system, user and assistant are read as system."""
    if tokenizer.chat_template:
        from llmgen.chat_template import template_ids

        return template_ids(tokenizer, messages)
    ids = start_ids(tokenizer)
    for message in messages:
        role = message["role"] if message["role"] in ("user", "assistant") else "system"
        ids += message_ids(tokenizer, role, message["content"])
    return ids + header_ids(tokenizer, "assistant")


def end_of_reply_ids(tokenizer: Tokenizer, reply: list[int]) -> list[int]:
    """What closes an assistant message after its generated ids: its end marker (unless the reply
    already ended with one), and for ChatML the newline after it."""
    end = tokenizer.encoding.encode_single_token("<|im_end|>" if tokenizer.chat_format == "chatml" else "<|eot_id|>")
    ids = [] if reply and reply[-1] == end else [end]
    return ids + (tokenizer.encode("\n", bos=False) if tokenizer.chat_format == "chatml" else [])


class MessageTooLong(LLMGenError):
    """A chat message that does not fit in the model's window by itself."""


@dataclass
class Turn:
    user: str
    reply_ids: list[int] = field(default_factory=list)
    new_tokens: int = 0  # prefilled for this turn
    cached_tokens: int = 0  # reused from the KV cache


class Conversation:
    """A chat with one model: reply(text) yields the reply's ids, prefilling only what the cache lacks.

    When the conversation would outgrow the model's window, the oldest turns are dropped (on_drop is told)
    and the rest is prefilled again.
    """

    def __init__(self, model, tokenizer: Tokenizer, system: str | None = None,
                 on_drop: Callable[[str], None] | None = None):
        if tokenizer.chat_format is None and not tokenizer.chat_template:
            raise LLMGenError(NO_TEMPLATE)
        self.model, self.tokenizer, self.system, self.on_drop = model, tokenizer, system, on_drop
        self.turns: list[Turn] = []
        # The KV cache holds cached_prompt and then cached_turn's reply ids but the last (never fed back).
        self.cached_prompt: list[int] = []
        self.cached_turn: Turn | None = None
        self.cache = None  # the KV cache those are in (a model's first layer's): anyone may replace it

    def _first_cache(self):
        from llmgen.decode import family

        return family(self.model).first_cache(self.model)

    @property
    def cached_ids(self) -> list[int]:
        return self.cached_prompt + (self.cached_turn.reply_ids[:-1] if self.cached_turn else [])

    def reset(self, system: str | None = None) -> None:
        self.system, self.turns = system, []

    def ids(self, turns: list[Turn]) -> list[int]:
        """The conversation's ids for these turns, ending where the next reply begins."""
        if self.tokenizer.chat_template:  # the whole conversation through the model's template
            from llmgen.chat_template import template_ids

            messages = self.messages(turns)
            if turns and turns[-1].reply_ids:  # the prompt for the last turn ends where its reply begins
                messages.pop()
            return template_ids(self.tokenizer, messages)
        ids = start_ids(self.tokenizer) + (message_ids(self.tokenizer, "system", self.system) if self.system else [])
        for turn in turns:
            ids += message_ids(self.tokenizer, "user", turn.user) + header_ids(self.tokenizer, "assistant")
            if turn is not turns[-1]:
                ids += turn.reply_ids + end_of_reply_ids(self.tokenizer, turn.reply_ids)
        return ids

    def messages(self, turns: list[Turn] | None = None) -> list[dict[str, str]]:
        """The conversation as role/content messages (for /save and for a chat template); a turn without a
        reply yet is the user's message alone."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.turns if turns is None else turns:
            out.append({"role": "user", "content": turn.user})
            if turn.reply_ids:
                out.append({"role": "assistant", "content": self.tokenizer.decode(
                    [i for i in turn.reply_ids if i not in self.tokenizer.stop_ids])})
        return out

    def reply(self, text: str, settings, *, generator=None, decoder=None, agree=None) -> Iterator[int]:
        """The reply's ids as they are generated. A message that does not fit in the model's window even
        alone raises MessageTooLong at once and leaves the conversation as it was; one that fits with
        fewer earlier turns drops the oldest (on_drop is told); a reply gets at most the room left."""
        window = self.model.config.context_length
        turn = Turn(text)
        alone = self.ids([turn])
        if len(alone) >= window:
            raise MessageTooLong(f"the message is {len(alone)} tokens in the chat's format, more than the model's "
                                 f"window of {window}; it was not sent, and the conversation is kept")
        self.turns.append(turn)
        ids = self.ids(self.turns)
        while len(ids) + settings.max_new_tokens > window and len(self.turns) > 1:
            self.turns.pop(0)
            ids = self.ids(self.turns)
            if self.on_drop is not None:
                self.on_drop(f"the conversation is longer than the model's window of {window} tokens; "
                             "the oldest turn was dropped")
        if len(ids) + settings.max_new_tokens > window:
            settings = replace(settings, max_new_tokens=window - len(ids))
        return self._generate(ids, turn, settings, generator, decoder, agree)

    def _generate(self, ids: list[int], turn: Turn, settings, generator, decoder, agree) -> Iterator[int]:
        from llmgen.generation import common_prefix, generate_ids

        window = self.model.config.context_length
        needed = min(window, len(ids) + settings.max_new_tokens)
        cached = common_prefix(self.cached_ids, ids)
        if cached == len(ids):  # the whole prompt is cached: prefill its last token again for its logits
            cached -= 1
        if self.cache is None or self._first_cache() is not self.cache or self.cache.max_len < needed:
            # A new or bigger cache (or one another generation replaced): everything is prefilled again.
            self.model.setup_cache(1, min(window, -(-needed // CACHE_STEP) * CACHE_STEP))
            self.cache, cached = self._first_cache(), 0
        turn.new_tokens, turn.cached_tokens = len(ids) - cached, cached
        self.cached_prompt, self.cached_turn = ids[:cached], None
        for token in generate_ids(self.model, ids, settings, stop_ids=self.tokenizer.stop_ids,
                                  n_valid=self.tokenizer.n_vocab, generator=generator, decoder=decoder,
                                  cached=cached, agree=agree):
            # Prefilled: the cache holds the prompt, and the reply but its newest token. The caller may stop
            # reading at any token (a stop string, Ctrl-C), so this is kept true at each one.
            self.cached_prompt, self.cached_turn = ids, turn
            turn.reply_ids.append(token)
            yield token
