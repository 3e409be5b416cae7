"""Why a model could not be evaluated: the reasons, and the error carrying one with an excerpt."""

from __future__ import annotations

import re

REASONS = frozenset(
    {
        "load_failed",
        "raised",
        "wrong_row_count",
        "non_finite",
        "bad_output",
        "timeout",
        "memory",
        "output_too_large",
        "no_output",
        "killed",
    }
)
EXCERPT_CHARS = 2000

_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[^\S\n\t ]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class SandboxFailure(Exception):
    """The model could not be evaluated; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, excerpt: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown sandbox failure reason {reason!r}")
        self.reason = reason
        self.excerpt = sanitise(excerpt)
        super().__init__(f"{reason}: {self.excerpt}" if self.excerpt else reason)


def sanitise(text: str) -> str:
    """Printable text only, at most EXCERPT_CHARS, keeping the end (where the error is)."""
    cleaned = _CONTROL.sub("", text)
    cleaned = re.sub(r"\n{3,}", "\n\n", cleaned).strip()
    if len(cleaned) > EXCERPT_CHARS:
        cleaned = "…" + cleaned[-(EXCERPT_CHARS - 1) :]
    return cleaned
