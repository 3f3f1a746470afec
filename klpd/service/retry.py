"""Retry as a value object, after urllib3's ``Retry``: the configuration and the progress in
one immutable value; :meth:`Retry.increment` returns the next one, :meth:`Retry.is_exhausted`
says when to stop. Every EBUSY / "in use" retry of the executor goes through it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from klpd.service.config import RetryConfig


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 5  # tries in all, the first included
    backoff: float = 0.2  # seconds after the first failed try; doubled after each
    backoff_max: float = 2.0
    attempt: int = 1  # the try about to be made (or just made), 1-based

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> Retry:
        return cls(cfg.ebusy_attempts, cfg.ebusy_backoff, cfg.ebusy_backoff_max)

    def is_exhausted(self) -> bool:
        """No try is left after this one."""
        return self.attempt >= self.attempts

    def delay(self) -> float:
        """Seconds to wait after the current try failed, before the next."""
        return min(self.backoff * 2.0 ** (self.attempt - 1), self.backoff_max)

    def increment(self) -> Retry:
        if self.is_exhausted():
            raise ValueError(f"retry exhausted after {self.attempts} attempts")
        return replace(self, attempt=self.attempt + 1)
