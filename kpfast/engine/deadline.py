"""A wall-clock limit for a whole run, so a long job can stop cleanly and continue in the next call."""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import TimeLimitReached


@dataclass(frozen=True)
class Deadline:
    """A wall-clock limit, checked between epochs (None: no limit)."""

    at: float | None = None  # time.monotonic() value

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def check(self, upcoming: float = 0.0, what: str = "") -> None:
        """Raise TimeLimitReached if work of `upcoming` seconds would end past the deadline."""
        if self.at is not None and time.monotonic() + upcoming > self.at:
            raise TimeLimitReached(f"time limit reached{' before ' + what if what else ''}; "
                                   "progress is saved: run the same command again to continue")
