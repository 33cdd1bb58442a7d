"""`llmgen generate --tp N`: this same command as N ranks, started by torchrun's own launcher.

torch.distributed.run (what the `torchrun` command runs) starts `python -m llmgen ARGS` N times on this
machine (a standalone rendezvous on a free port), each with RANK, WORLD_SIZE and LOCAL_RANK set, and
watches them: when one fails, it stops the others. The ranks know they were started here (LLMGEN_TP_LAUNCHER)
and leave error reporting to this process, which prints the one line that says why the run ended. Under a
plain `torchrun` (other machines, --nnodes M) the ranks run the same code, and rank 0 prints its own error.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile

from llmgen.errors import LLMGenError, UsageError
from llmgen.parallel import LAUNCHED_BY_LLMGEN

EXIT_INTERRUPTED = 130


def ranks_to_start(requested: int | None) -> tuple[int, bool]:
    """(how many ranks the run has, whether this process must start them): --tp N from a shell starts N;
    under torchrun (WORLD_SIZE set) the processes are already there, and --tp, if given, must agree."""
    if requested is not None and not 1 <= requested <= 256:
        raise UsageError(f"--tp must be from 1 to 256, got {requested}")
    try:
        started = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r:.20} is not a number") from None
    if started > 1:
        if requested not in (None, started):
            raise UsageError(f"--tp {requested}, but the launcher started {started} processes (WORLD_SIZE)")
        return started, False
    return (requested or 1), (requested or 1) > 1


def launch(n_ranks: int, args: list[str]) -> int:
    """Run `llmgen ARGS` as n_ranks local ranks; 0 when every rank succeeded, else LLMGenError with the
    first failure's line (or with Ctrl-C's, after every rank is stopped: exit status 130)."""
    # One thread a rank per core share (torchrun would otherwise set 1 and say so on stderr).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n_ranks)))
    os.environ[LAUNCHED_BY_LLMGEN] = "1"
    os.environ.setdefault("LOGLEVEL", "CRITICAL")  # elastic's loggers read it as they are made
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):  # what the launcher logs, this process says in one line
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="llmgen-tp-") as logs:
        try:
            run(parse_args(["--standalone", f"--nproc-per-node={n_ranks}", "--max-restarts=0",
                            f"--log-dir={logs}/run", "--module", "llmgen", *args]))
        except ChildFailedError as e:
            if 0 not in e.failures and all(_lost_contact(f) for f in e.failures.values()):
                return 0  # rank 0, the one that writes, finished (or its reader went away): the rest is moot
            message, code = first_failure(e.failures, n_ranks)
            raise LLMGenError(message, exit_code=code) from None
        except SignalException as e:  # Ctrl-C (the ranks, in sessions of their own, do not see it) or kill
            what = "interrupted" if e.sigval == signal.SIGINT else f"stopped by {signal.Signals(e.sigval).name}"
            raise LLMGenError(f"{what}; all {n_ranks} ranks were stopped",
                              exit_code=128 + int(e.sigval)) from None
    return 0


def _ours(failure) -> dict | None:
    """What a rank recorded of its error (parallel/group.py), or None."""
    data = failure.error_file_data
    ours = data.get("llmgen") if isinstance(data, dict) else None
    return ours if isinstance(ours, dict) and isinstance(failure.message, str) else None


def _lost_contact(failure) -> bool:
    return bool((_ours(failure) or {}).get("consequence"))


def join_ranks(invocation, device: str):
    """This process as a rank of a tensor-parallel run (parallel/group.py): joined to the others on "cpu",
    "cuda" or "auto"; from here on its errors go to the launcher (invocation.error_reporter)."""
    import torch

    from llmgen.parallel import group

    invocation.error_reporter = group.report_error
    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return group.join(group.from_environment("cuda" if on_cuda else "cpu"))


def first_failure(failures: dict, n_ranks: int) -> tuple[str, int]:
    """The line and exit code that say why a run ended, from torch elastic's ProcessFailures by rank: the
    earliest error a rank recorded itself (parallel/group.py), else a rank that died (a signal other than
    the launcher's SIGTERM first, or an exit without a record), else the earliest rank that only lost
    contact with another."""
    recorded: list[tuple[float, int, str, int]] = []
    lost: list[tuple[float, int, str, int]] = []
    for rank, failure in failures.items():
        if (ours := _ours(failure)) is not None:
            (lost if ours.get("consequence") else recorded).append(
                (float(ours.get("time", 0)), rank, failure.message, int(ours.get("exit_code", 1)) or 1))
    if recorded:
        _, _, message, code = min(recorded)
        return message, code
    # SIGTERM is how the launcher stops the other ranks once one has failed: the cause is a rank that
    # ended otherwise, where there is one.
    unrecorded = sorted((failure.exitcode == -signal.SIGTERM, rank) for rank, failure in failures.items()
                        if _ours(failure) is None)
    if unrecorded:
        rank = unrecorded[0][1]
        exitcode = failures[rank].exitcode
        if exitcode < 0:
            how = f"was killed by {failures[rank].signal_name()}"
        else:
            how = "was interrupted" if exitcode == EXIT_INTERRUPTED else f"exited with status {exitcode}"
        return f"tensor-parallel rank {rank} of {n_ranks} {how}; the other ranks were stopped", 1
    _, _, message, code = min(lost)
    return message, code
