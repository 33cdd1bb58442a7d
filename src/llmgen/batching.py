"""Continuous batching: many sequences decoded together, one forward pass a step (`llmgen serve`).

A BatchEngine owns a model whose KV cache has one slot per sequence (setup_cache(max_sequences,
ctx_size)). Each step() takes one row per decoding sequence (its newest token) and, within a budget,
rows of the prompts still being prefilled (in chunks, so that a long prompt does not stall the others'
streams), runs them all in one call (Decoder.rows: every matmul over all rows, the GEMM path), and
picks each sequence's next id with its own settings and generator. Requests join between steps and leave
when they finish or are cancelled.

Prefix cache, in two parts. A slot keeps the keys and values of its last sequence after it ends: a new
prompt goes to the free slot that already holds its longest prefix (the least recently used one when none
does). And every prompt, once computed, and every sequence, once finished, leaves copies of its keys and
values in a radix tree of 16-token blocks (prefix_tree.py) that outlives the slots, bounded by
prefix_cache_bytes (least recently used blocks dropped first). A prompt starts from whichever holds more
of it: its free slot, a busy slot (copied across), or the tree (copied in): a tensor copy, no forward
pass, so a shared system prompt or a chat's earlier turns are computed once.

Every row is computed bit for bit as its sequence alone would be (llama_layers.cpp), and ids are picked
by generation.pick_id, so a sequence's ids do not depend on what shares its steps: greedy output is
`llmgen generate`'s, and a seeded sample is too. Decoders that cannot batch sequences (PyTorch's path,
GPT-2) step each sequence in turn over its slot's own caches, swapped into the model.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmgen.decode import Decoder, choose_decoder
from llmgen.generation import SamplingSettings, common_prefix, pick_id
from llmgen.grammar import JsonConstraint
from llmgen.models import Model
from llmgen.models.kv_cache import cached_attentions
from llmgen.prefix_tree import BLOCK, PrefixTree
from llmgen.sampling import log_probs

PREFILL_WHILE_DECODING = 64  # prompt rows a step takes while other sequences wait for their next token
MIN_COPIED_PREFIX = 16  # shorter shared prefixes are recomputed rather than copied from a busy slot
PREFIX_CACHE_BYTES = 1 << 30  # the radix tree's default bound (llama-server's --cache-ram is 8 GiB)


@dataclass
class Token:
    """One generated id, with its log-probability and the top alternatives when the request asked."""

    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # (id, log-probability), most likely first


@dataclass
class Finished:
    """A sequence's end: "stop" (a stop id, or the caller's stop string), "length" (max tokens or the
    slot's context), "cancelled", or "error" with its message."""

    reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose keys and values came from the prefix cache
    error: str | None = None


Update = Token | Finished


@dataclass
class Request:
    """What to generate: on_update is called on the engine's thread with each Token, then one Finished."""

    prompt_ids: list[int]
    settings: SamplingSettings
    on_update: Callable[[Update], None]
    stop_ids: frozenset[int] = frozenset()
    generator: torch.Generator | None = None
    top_logprobs: int | None = None  # None: no log-probabilities; k >= 0: the chosen id's and the top k
    constraint: JsonConstraint | None = None  # structured output: the ids it allows, ending when it is complete


@dataclass(eq=False)
class Sequence:
    request: Request
    slot: int
    tokens: list[int]  # the prompt, then every id generated
    done: int  # positions of the slot's cache written: tokens[:done]
    cached: int  # of the prompt, reused from the prefix cache
    generated: int = 0
    cancelled: bool = False
    ready: bool = False  # the prompt is in the cache and tokens[-1] is the newest id

    @property
    def prompt_length(self) -> int:
        return len(self.request.prompt_ids)


@dataclass
class Slot:
    index: int
    cached: list[int] = field(default_factory=list)  # ids whose keys and values it holds, when free
    sequence: Sequence | None = None
    last_used: float = 0.0

    def holds(self) -> list[int]:
        """The ids at positions 0.. of this slot's cache."""
        return self.cached if self.sequence is None else self.sequence.tokens[:self.sequence.done]


class Handle:
    """A submitted request: cancel() ends it at the next step (a client that went away)."""

    def __init__(self, engine: BatchEngine, sequence_box: list):
        self._engine, self._box = engine, sequence_box

    def cancel(self) -> None:
        self._engine.cancel(self._box)


class BatchEngine:
    """Requests in, ids out: a scheduler over max_sequences cache slots of ctx_size positions each.

    submit() may be called from any thread; run_forever() (or step() in tests) runs on one thread, the only
    one that touches the model.
    """

    def __init__(self, model: Model, *, max_sequences: int = 4, ctx_size: int = 2048, batch_size: int = 512,
                 n_valid: int | None = None, decoder: Decoder | None = None, max_waiting: int = 64,
                 prefix_cache_bytes: int = PREFIX_CACHE_BYTES):
        if max_sequences < 1 or ctx_size < 2 or batch_size < 1:
            raise ValueError("max-sequences >= 1, ctx-size >= 2 and batch-size >= 1 are needed")
        self.model, self.batch_size, self.max_waiting = model, batch_size, max_waiting
        self.ctx_size = min(ctx_size, model.config.context_length)
        self.n_valid = n_valid or model.config.vocab_size
        self.slots = [Slot(i) for i in range(max_sequences)]
        self.decoder = decoder or choose_decoder(model)
        self.batched = self.decoder.batches_sequences
        if self.batched:  # one cache with a slot per sequence, all stepped in one call
            model.setup_cache(max_sequences, self.decoder.cache_length(self.ctx_size))
            self.caches = [attention.cache for attention in cached_attentions(model)]
        else:  # a cache of one slot per sequence, swapped in; a decoder each (its plan is its cache's)
            self.slot_caches, self.slot_decoders = [], []
            for _ in self.slots:
                model.setup_cache(1, self.ctx_size)
                self.slot_caches.append([attention.cache for attention in cached_attentions(model)])
                model_decoder = choose_decoder(model)
                self.slot_decoders.append(model_decoder)
                for attention in cached_attentions(model):  # a fresh set for the next slot
                    attention.kv_cache = None
        self.prefix_block_bytes = BLOCK * sum(k_t[..., 0].nbytes + v[:, 0].nbytes for k_t, v in self._views(0))
        self.tree = PrefixTree(max(prefix_cache_bytes, 0) // self.prefix_block_bytes)
        self.stored: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # a tree key -> each layer's (k_t, v)
        self.waiting: deque[tuple[Request, list]] = deque()
        self.lock = threading.Condition()
        self.stopping = False
        self.steps = 0
        self.share: Callable[[dict], None] | None = None  # rank 0 of a tensor-parallel server: see _execute

    # -- the caller's side (any thread) --

    def submit(self, request: Request) -> Handle | None:
        """Queue a request (None when max_waiting requests already wait for a slot: the caller says 503)."""
        if not request.prompt_ids or len(request.prompt_ids) >= self.ctx_size:
            raise ValueError(f"a prompt needs 1 to {self.ctx_size - 1} tokens, got {len(request.prompt_ids)}")
        box: list = [request]  # the request, then its Sequence once admitted
        if request.settings.max_new_tokens == 0:
            request.on_update(Finished("length", len(request.prompt_ids), 0, 0))
            return Handle(self, box)
        with self.lock:
            free = sum(slot.sequence is None for slot in self.slots)
            if len(self.waiting) >= self.max_waiting + free:  # max_waiting beyond those a free slot takes
                return None
            self.waiting.append((request, box))
            self.lock.notify()
        return Handle(self, box)

    def cancel(self, box: list) -> None:
        with self.lock:
            if isinstance(box[-1], Sequence):
                box[-1].cancelled = True
            else:
                for item in list(self.waiting):
                    if item[1] is box:
                        self.waiting.remove(item)
                        box[0].on_update(Finished("cancelled", len(box[0].prompt_ids), 0, 0))
            self.lock.notify()

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()

    @property
    def active(self) -> int:
        return sum(slot.sequence is not None for slot in self.slots)

    def run_forever(self) -> None:
        """Step while there is work, sleep while there is none, until stop()."""
        while True:
            with self.lock:
                while not self.stopping and not self.waiting and not self.active:
                    self.lock.wait()
                if self.stopping:
                    break
            self.step()
        for slot in self.slots:  # whatever was running ends
            if slot.sequence is not None:
                self._finish(slot.sequence, "cancelled")

    # -- the engine's thread --

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests into free slots, run one pass over every active sequence, pick ids."""
        self._admit()
        running = [slot.sequence for slot in self.slots if slot.sequence is not None]
        for sequence in running:
            if sequence.cancelled:
                self._finish(sequence, "cancelled")
        running = [s for s in running if not s.cancelled]
        if not running:
            return
        # rows: (sequence, first position, ids) chunks; a decoding sequence's is its newest id
        decoding = [s for s in running if s.ready]
        budget = self.batch_size - len(decoding)
        if decoding:
            budget = min(budget, PREFILL_WHILE_DECODING)
        chunks = [(s, s.done, [s.tokens[-1]]) for s in decoding]
        for sequence in (s for s in running if not s.ready):  # prompts, oldest slot first
            n = min(budget, sequence.prompt_length - sequence.done)
            if n <= 0:
                break
            chunks.append((sequence, sequence.done, sequence.tokens[sequence.done:sequence.done + n]))
            budget -= n
        try:
            logits = self._run(chunks)
        except Exception as e:  # noqa: BLE001 - each sequence in the failed pass is told, the engine goes on
            for sequence, _, _ in chunks:
                self._finish(sequence, "error", error=str(e) or type(e).__name__)
            return
        self.steps += 1
        for (sequence, start, ids), row_logits in zip(chunks, logits):
            sequence.done = start + len(ids)
            if row_logits is None:
                continue  # a prompt's chunk before its last
            if not sequence.ready:  # the prompt is computed: the next prompt sharing it need not wait
                sequence.ready = True
                self._remember(sequence)
            try:
                self._pick(sequence, row_logits)
            except Exception as e:  # noqa: BLE001 - NaN logits, a grammar that fails: this sequence ends
                self._finish(sequence, "error", error=str(e) or type(e).__name__)

    def _admit(self) -> None:
        with self.lock:
            while self.waiting:
                free = [slot for slot in self.slots if slot.sequence is None]
                if not free:
                    return
                request, box = self.waiting.popleft()
                box.append(self._place(request, free))

    def _place(self, request: Request, free: list[Slot]) -> Sequence:
        """A sequence for the request in the free slot holding its longest prefix, or the least recently
        used; a longer prefix held by a busy slot or the tree is copied into it."""
        prompt = request.prompt_ids
        target = max(free, key=lambda slot: (common_prefix(slot.holds(), prompt), -slot.last_used))
        reused = common_prefix(target.holds(), prompt)
        busy = [slot for slot in self.slots if slot.sequence is not None]
        source = max(busy, key=lambda slot: common_prefix(slot.holds(), prompt), default=None)
        shared = common_prefix(source.holds(), prompt) if source is not None else 0
        keys = self.tree.match(prompt)
        from_tree = len(keys) * self.tree.block
        if from_tree > max(reused, shared):
            self._execute({"load": [target.index, keys]})
            reused = from_tree
        elif source is not None and shared >= max(reused + 1, MIN_COPIED_PREFIX):
            self._execute({"copy": [source.index, target.index, shared]})
            reused = shared
        reused = min(reused, len(prompt) - 1)  # the prompt's last id is always run: its logits are the first
        sequence = Sequence(request, target.index, list(prompt), done=reused, cached=reused)
        target.sequence, target.cached = sequence, []
        return sequence

    def _remember(self, sequence: Sequence) -> None:
        """The whole blocks of what the sequence's slot holds, into the tree (those it lacks)."""
        added, dropped = self.tree.insert(sequence.tokens[:sequence.done])
        if dropped:
            self._execute({"drop": dropped})
        if added:
            self._execute({"save": [sequence.slot, added]})

    def _views(self, slot: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cache of one slot: (k_t (n_kv_heads, head_dim, length), v (n_kv_heads, length, head_dim))."""
        caches = self.caches if self.batched else self.slot_caches[slot]
        row = slot if self.batched else 0
        return [(cache.k_t[row], cache.v[row]) for cache in caches]

    def _run(self, chunks: list[tuple[Sequence, int, list[int]]]) -> list[torch.Tensor | None]:
        """One pass: each chunk's (1, vocab) logits after its last id when that id is a sequence's newest
        (or its prompt's last), else None."""
        wanted = [start + len(ids) >= s.prompt_length for s, start, ids in chunks]
        if self.batched:
            tokens: list[int] = []
            positions: list[int] = []
            slots: list[int] = []
            logit_rows: list[int] = []
            for (sequence, start, ids), want in zip(chunks, wanted):
                tokens += ids
                positions += range(start, start + len(ids))
                slots += [sequence.slot] * len(ids)
                if want:
                    logit_rows.append(len(tokens) - 1)
            # (len(logit_rows), vocab); a pass of prompt chunks alone wants none, but still fills the cache
            rows = iter(self._execute({"rows": [tokens, positions, slots, logit_rows]}).split(1))
            return [next(rows) if want else None for want in wanted]
        out = [self._execute({"block": [sequence.slot, ids, start]}) for sequence, start, ids in chunks]
        return [logits if want else None for logits, want in zip(out, wanted)]

    def _execute(self, op: dict):
        """What touches the model, as data: a prefix copy between slots ("copy"), blocks into, out of or
        from the prefix tree's store ("load", "save", "drop"), one batched pass ("rows"), or one sequence's
        ids over its own caches ("block"). With `share` set (rank 0 of a tensor-parallel server), each op
        goes to the other ranks first, which run it on their shards (follow)."""
        if self.share is not None:
            self.share(op)
        if "copy" in op:  # a busy slot's prefix into another slot
            source, target, length = op["copy"]
            for (k_source, v_source), (k_target, v_target) in zip(self._views(source), self._views(target)):
                k_target[..., :length] = k_source[..., :length]
                v_target[:, :length] = v_source[:, :length]
            return None
        if "save" in op:  # blocks of a slot into the tree's store: [(key, first position)]
            slot, blocks = op["save"]
            views, size = self._views(slot), self.tree.block
            for key, start in blocks:
                self.stored[key] = [(k_t[..., start:start + size].clone(), v[:, start:start + size].clone())
                                    for k_t, v in views]
            return None
        if "load" in op:  # the tree's blocks, in order, into a slot from position 0
            slot, keys = op["load"]
            length = len(keys) * self.tree.block
            for layer, (k_t, v) in enumerate(self._views(slot)):
                k_t[..., :length] = torch.cat([self.stored[key][layer][0] for key in keys], dim=-1)
                v[:, :length] = torch.cat([self.stored[key][layer][1] for key in keys], dim=1)
            return None
        if "drop" in op:
            for key in op["drop"]:
                del self.stored[key]
            return None
        if "rows" in op:
            tokens, positions, slots, logit_rows = op["rows"]
            return self.decoder.rows(tokens, positions, slots, logit_rows)
        slot, ids, start = op["block"]
        for attention, cache in zip(cached_attentions(self.model), self.slot_caches[slot]):
            attention.kv_cache = cache
        return self.slot_decoders[slot].block(ids, start, last_only=True)  # (1, vocab)

    @torch.inference_mode()
    def follow(self, receive: Callable[[], dict | None]) -> None:
        """A tensor-parallel rank other than 0: run each op rank 0's engine shares (receive), until None.
        Only rank 0 picks ids; here the logits are dropped."""
        while (op := receive()) is not None:
            try:
                self._execute(op)
            except ValueError:  # rank 0 raised the same for the same op, and told its sequences
                pass

    def _pick(self, sequence: Sequence, logits: torch.Tensor) -> None:
        request = sequence.request
        chosen: list[torch.Tensor] = []
        next_id = pick_id(logits, sequence.tokens, request.settings, sequence.generated, n_valid=self.n_valid,
                          generator=request.generator,
                          on_logits=None if request.top_logprobs is None else chosen.append,
                          constraint=request.constraint)
        if request.constraint is not None:
            request.constraint.consume(next_id)
        token = Token(next_id)
        if chosen:
            values = log_probs(chosen[0])
            token.logprob = float(values[next_id])
            if request.top_logprobs:
                top = values.topk(min(request.top_logprobs, values.numel()))
                token.top = [(int(i), float(v)) for v, i in zip(top.values, top.indices)]
        sequence.generated += 1
        sequence.tokens.append(next_id)
        request.on_update(token)
        if next_id in request.stop_ids or (request.constraint is not None and request.constraint.complete):
            self._finish(sequence, "stop")
        elif sequence.generated >= request.settings.max_new_tokens or len(sequence.tokens) >= self.ctx_size:
            self._finish(sequence, "length")

    def _finish(self, sequence: Sequence, reason: str, error: str | None = None) -> None:
        slot = self.slots[sequence.slot]
        slot.cached, slot.sequence, slot.last_used = sequence.tokens[:sequence.done], None, time.monotonic()
        if reason == "error":
            slot.cached = []  # what the failed pass wrote is unknown
        else:
            self._remember(sequence)
        sequence.request.on_update(Finished(reason, sequence.prompt_length, sequence.generated, sequence.cached,
                                            error))
