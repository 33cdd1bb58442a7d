"""The one exception type the CLI turns into a single line on stderr."""


class LLMGenError(Exception):
    """A user-facing failure: bad input, a missing or corrupt file, an unreachable service.

    The message is one sentence that says what went wrong and, where possible, what to do.
    `exit_code` lets the CLI distinguish classes of failure for scripts.
    """

    exit_code = 1
    consequence = False  # tensor parallelism: caused by another rank's failure (parallel/group.py)

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(LLMGenError):
    """A value the user gave that llmgen cannot take (an option out of range, an unknown name, an empty
    prompt): exit code 2, as for the options Typer itself rejects."""

    exit_code = 2


class LLMGenWarning(UserWarning):
    """Something the user should know that does not stop the command (a damaged cache rebuilt): the CLI
    prints it as one `warning:` line."""


def first_line(error: BaseException) -> str:
    """An exception's message, first line only (torch and C++ libraries write pages), or its type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
