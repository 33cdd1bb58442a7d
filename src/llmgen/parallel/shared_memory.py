"""All-reduce through shared memory, for ranks on one machine: gloo's goes through TCP and its threads,
about a millisecond for a decode step's few kilobytes on 2 cores, and a LLaMA step makes 2 a layer.

Each rank copies its tensor into its own slot of a shared buffer, raises its flag to the call's number,
waits until every rank's flag is there, and sums the slots in rank order: every rank computes the same
sum from the same bytes, so all hold identical results. Two sets of slots take turns: a rank can only be
a call ahead of the slowest (it waits for that one's flag), so the set it writes is never one still read.
x86-64 keeps stores in order and loads in order, which is all the flag protocol needs.

A tensor larger than a slot (a long prompt's activations) goes through gloo instead. A rank waiting for
another looks every few milliseconds whether that one's process still runs (its pid is in the header),
and gives up with an error when it does not, as gloo does when a peer's socket closes.
"""

from __future__ import annotations

import mmap
import os
import secrets
from pathlib import Path

import numpy as np
import torch

SLOT_BYTES = 2 << 20  # a 256k vocabulary's float32 logits, or a 512k-wide activation
SHARED_MEMORY = Path("/dev/shm")  # Linux's memory-backed files


class SharedMemoryAllReduce:
    def __init__(self, rank: int, world: int, memory: mmap.mmap):
        self.rank, self.world, self.memory, self.calls = rank, world, memory, 0
        buffer = memory
        # Header: (world,) int64 flags and (world,) int64 pids; then 2 sets of world slots of SLOT_BYTES.
        self.flags = np.ndarray((world,), dtype=np.int64, buffer=buffer)
        self.pids = np.ndarray((world,), dtype=np.int64, buffer=buffer, offset=8 * world)
        self.pids[rank] = os.getpid()
        data = torch.frombuffer(buffer, dtype=torch.uint8, offset=self.header(world), count=2 * world * SLOT_BYTES)
        self.slots = data.view(2, world, SLOT_BYTES)

    @staticmethod
    def header(world: int) -> int:
        return 64 * ((16 * world + 63) // 64)

    @classmethod
    def size(cls, world: int) -> int:
        return cls.header(world) + 2 * world * SLOT_BYTES

    def fits(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cpu" and tensor.numel() * tensor.element_size() <= SLOT_BYTES

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, into tensor (contiguous, on the CPU, at most SLOT_BYTES)."""
        self.calls += 1
        nbytes = tensor.numel() * tensor.element_size()
        slots = self.slots[self.calls % 2]  # (world, SLOT_BYTES)
        mine = slots[self.rank, :nbytes].view(tensor.dtype).view(tensor.shape)
        mine.copy_(tensor)
        self.flags[self.rank] = self.calls
        flags, call, spins = self.flags, self.calls, 0
        while flags.min() < call:
            os.sched_yield()  # let a rank that shares this core run
            spins += 1
            if spins % 4096 == 0:
                self._check_peers(call)
        parts = [slots[r, :nbytes].view(tensor.dtype).view(tensor.shape) for r in range(self.world)]
        total = parts[0].clone()
        for part in parts[1:]:
            total += part
        return tensor.copy_(total)

    def _check_peers(self, call: int) -> None:
        for rank in range(self.world):
            if self.flags[rank] < call and not _running(int(self.pids[rank])):
                raise RuntimeError(f"rank {rank}'s process ended")

    def close(self) -> None:
        # Views of the mapping, dropped so that it can close.
        self.flags = self.pids = self.slots = None  # type: ignore[assignment]
        try:
            self.memory.close()
        except BufferError:  # a view still alive: the mapping goes with the process
            pass


def create(rank: int, world: int, share_name, barrier) -> SharedMemoryAllReduce:
    """Rank 0 makes a file in /dev/shm, every rank maps it, and it is unlinked at once: nothing is left
    behind however the ranks end. share_name(rank 0's name, None elsewhere) -> it, on every rank;
    barrier() waits for every rank. OSError where there is no /dev/shm."""
    size = SharedMemoryAllReduce.size(world)
    path = SHARED_MEMORY / f"llmgen-tp-{secrets.token_hex(8)}" if rank == 0 else None
    if path is not None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, size)  # zeros: every flag starts at 0
    path = Path(share_name(str(path) if path is not None else None))
    if rank != 0:
        if path.parent != SHARED_MEMORY or not path.name.startswith("llmgen-tp-"):
            raise OSError(f"rank 0 named {path} for the all-reduce, not a file of {SHARED_MEMORY}")
        fd = os.open(path, os.O_RDWR)
    try:
        memory = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    barrier()  # every rank has it mapped
    if rank == 0:
        path.unlink()
    return SharedMemoryAllReduce(rank, world, memory)


def _running(pid: int) -> bool:
    """Whether a process runs (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
