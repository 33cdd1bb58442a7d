"""The ranks of a tensor-parallel run, on torch.distributed's process group.

torchrun (or `llmgen generate --tp N`, which starts torchrun's own launcher: cli/launch.py) starts one
process per rank and describes the run in its environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT. Each rank joins the default process group (gloo on CPUs, nccl on CUDA), loads its shard and
runs the same generation loop (from_environment, then join); what must agree goes through rank 0:
- the prompt: only rank 0 reads stdin and files (share_json);
- each sampled token: rank 0's, broadcast (first_rank_token), so every rank takes the same path to the end;
- output: only rank 0 writes stdout and stderr; the others' go to /dev/null.
A rank that fails writes its one-line error where torchrun's launcher collects it (report_error:
TORCHELASTIC_ERROR_FILE, in its JSON format), so that one line reports the run's failure (cli/launch.py,
or torchrun's own summary).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from llmgen.errors import LLMGenError, first_line
from llmgen.parallel import LAUNCHED_BY_LLMGEN, shared_memory
from llmgen.parallel.shard import Shard
from llmgen.parallel.shared_memory import SharedMemoryAllReduce

BACKEND = "LLMGEN_TP_BACKEND"  # gloo or nccl, instead of the device's default
ALL_REDUCE = "LLMGEN_TP_ALL_REDUCE"  # "gloo": CPU ranks on one machine all-reduce through gloo, not shared memory
TIMEOUT = timedelta(minutes=30)  # a rank waits this long for the others (loading a large shard takes a while)


class PeerLost(LLMGenError):
    """A collective failed: another rank is gone. A consequence, not a cause: the launcher reports the
    rank that failed first instead, when it knows."""

    consequence = True


@dataclass
class TensorParallel:
    shard: Shard
    device: str  # this rank's: "cpu" or "cuda:K"
    backend: str
    local: SharedMemoryAllReduce | None = None  # all ranks on this machine's CPUs: the fast path

    @property
    def rank(self) -> int:
        return self.shard.rank

    @property
    def world(self) -> int:
        return self.shard.world

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, in place; the tensor, for chaining. Through shared memory where the ranks
        share a machine and it fits (shared_memory.py), else the backend's."""
        try:
            if self.local is not None and self.local.fits(tensor) and tensor.is_contiguous():
                return self.local(tensor)
            dist.all_reduce(tensor)
        except RuntimeError as e:
            raise PeerLost(self._lost(e)) from None
        return tensor

    def first_rank_token(self, token: int) -> int:
        """Rank 0's token, on every rank."""
        value = torch.tensor([token], dtype=torch.int64, device=self._comm_device)
        try:
            dist.broadcast(value, src=0)
        except RuntimeError as e:
            raise PeerLost(self._lost(e)) from None
        return int(value.item())

    def share_json(self, value):
        """Rank 0's value (anything JSON holds), on every rank: sent as UTF-8 text, not pickled."""
        data = json.dumps(value, ensure_ascii=False).encode() if self.rank == 0 else b""
        try:
            size = torch.tensor([len(data)], dtype=torch.int64, device=self._comm_device)
            dist.broadcast(size, src=0)
            buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=self._comm_device)
            if self.rank == 0:
                buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            dist.broadcast(buffer, src=0)
        except RuntimeError as e:
            raise PeerLost(self._lost(e)) from None
        return json.loads(bytes(buffer.cpu().numpy()).decode())

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
            self.local = None
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except RuntimeError:
            pass

    @property
    def _comm_device(self) -> str:
        return self.device if self.backend == "nccl" else "cpu"

    def _lost(self, error: RuntimeError) -> str:
        reason = first_line(error)
        return f"tensor-parallel rank {self.rank} of {self.world} lost contact with another rank ({reason[:160]})"


def report_error(message: str, exit_code: int, consequence: bool) -> bool:
    """Record a rank's error line where torchrun's launcher collects it (its JSON error file), so that the
    launcher can print the run's first cause; whether to print it here too (rank 0 under a plain torchrun).
    Reads only the environment: it works before the rank has joined, or when joining failed."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        record = {"message": message, "timestamp": int(time.time()),
                  "llmgen": {"exit_code": exit_code, "consequence": consequence, "time": time.time()}}
        try:
            with open(path, "w") as f:
                json.dump(record, f)
        except OSError:
            pass
    return os.environ.get("RANK", "0") == "0" and os.environ.get(LAUNCHED_BY_LLMGEN) != "1"


def from_environment(device: str) -> TensorParallel:
    """This process's rank, as the environment describes it (WORLD_SIZE > 1), on `device` ("cpu" or
    "cuda"), before it joins the others (join). Ranks other than 0 stop writing to stdout and stderr."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except (KeyError, ValueError):
        raise LLMGenError("tensor parallelism needs RANK and WORLD_SIZE in the environment: start llmgen with "
                          "--tp N, or under torchrun") from None
    if not 0 <= rank < world:
        raise LLMGenError(f"RANK {rank} is outside WORLD_SIZE {world}")
    if rank != 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    backend = os.environ.get(BACKEND) or ("nccl" if device == "cuda" else "gloo")
    tensor_parallel = TensorParallel(Shard(rank, world), device, backend)
    if backend not in ("gloo", "nccl"):
        raise LLMGenError(f"{BACKEND}={backend!r:.20}: choose gloo or nccl")
    if device == "cuda":
        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise LLMGenError("--device cuda, but torch sees no CUDA device")
        if backend == "nccl" and local_world > gpus:
            raise LLMGenError(f"{local_world} ranks on this machine need {local_world} GPUs for nccl (one each), "
                              f"but it has {gpus}; use fewer ranks, or {BACKEND}=gloo to share them")
        tensor_parallel.device = f"cuda:{local_rank % gpus}"  # with gloo, ranks may share a GPU
        torch.cuda.set_device(tensor_parallel.device)
    return tensor_parallel


def join(tensor_parallel: TensorParallel) -> TensorParallel:
    """Join the default process group with the other ranks (torchrun's MASTER_ADDR and MASTER_PORT)."""
    try:
        if tensor_parallel.backend == "nccl":
            dist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device(tensor_parallel.device))
        else:
            dist.init_process_group(tensor_parallel.backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as e:
        tensor_parallel.close()
        reason = first_line(e)
        raise LLMGenError(f"could not join the tensor-parallel process group ({tensor_parallel.backend}): "
                          f"{reason[:200]}") from None
    if tensor_parallel.backend == "gloo":  # local to each rank, so safe on the way out of any failure
        atexit.register(tensor_parallel.close)
    local = os.environ.get("LOCAL_WORLD_SIZE") == str(tensor_parallel.world)
    if local and tensor_parallel.device == "cpu" and os.environ.get(ALL_REDUCE, "shared-memory") != "gloo":
        try:
            tensor_parallel.local = shared_memory.create(tensor_parallel.rank, tensor_parallel.world,
                                                         tensor_parallel.share_json, dist.barrier)
        except OSError as e:  # no /dev/shm (some containers): gloo's all-reduce does it all
            if tensor_parallel.rank == 0:
                print(f"warning: no shared memory for the ranks' all-reduce ({e.strerror or e}); using gloo's",
                      file=sys.stderr)
    return tensor_parallel


def start(device: str) -> TensorParallel:
    """from_environment and join, for callers with no error routing of their own (tests/support/tp_worker.py)."""
    return join(from_environment(device))
