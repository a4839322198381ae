"""User-facing errors.

Every failure a user can cause or meet (bad config, missing hardware, a recipe a
backend cannot do) is a :class:`HarnessError`. The CLI prints it as one line naming
the problem and the fix, records the matching status, and exits non-zero without a
traceback. Anything else is a bug and keeps its traceback under ``HYDRA_FULL_ERROR=1``.
"""

from __future__ import annotations

STATUSES = ("ok", "unavailable", "unsupported", "failed", "timeout", "mismatch", "interrupted")


class HarnessError(Exception):
    """A problem with a one-line explanation and, when known, the fix."""

    status = "failed"
    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        text = self.problem if not self.fix else f"{self.problem} (fix: {self.fix})"
        return " ".join(text.split())


def exception_line(exc: BaseException, limit: int | None = None) -> str:
    """``Type: message`` of any exception on one line (whitespace collapsed), for warnings
    and probe reasons that must stay one line; ``limit`` caps its length."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if limit is None else text[:limit]


class ConfigError(HarnessError):
    """The configuration names something that does not exist or has a bad value."""

    exit_code = 2


class Unavailable(HarnessError):
    """The backend is installed but cannot run here (library or device missing)."""

    status = "unavailable"
    exit_code = 3


class Unsupported(HarnessError):
    """The backend cannot do what the scenario asks (precision, recipe, training)."""

    status = "unsupported"
    exit_code = 4


class Mismatch(HarnessError):
    """The backend's outputs differ from the eager fp32 reference beyond tolerance."""

    status = "mismatch"
    exit_code = 5


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the CLI (Ctrl-C, Slurm's ``scancel``, a CI timeout).

    A ``KeyboardInterrupt`` so that every ``except KeyboardInterrupt`` that cleans up
    (the launcher killing its run process) treats both signals alike; ``signum`` picks
    the exit code (``128 + signum``: 130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


#: Exit code of the CLI for each record status (0 only when every run is ``ok``).
#: ``interrupted`` is 130 (SIGINT's); a run stopped by SIGTERM exits 143 (128 + 15).
EXIT_CODES = {"ok": 0, "failed": 1, "unavailable": 3, "unsupported": 4, "mismatch": 5, "timeout": 6, "interrupted": 130}
#: Exit code when a run's record could not be written to ``results_dir`` and went to the
#: fallback folder instead (the measurement is kept; the CLI says where).
RECORD_FALLBACK_EXIT = 7
