"""Background tasks that live as long as a context: the service's periodic sweeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any


@asynccontextmanager
async def running(
    loop: Callable[[], Coroutine[Any, Any, None]], *, name: str
) -> AsyncIterator[None]:
    """Run `loop()` as a task while the block runs; cancel it and wait for it on leaving."""
    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
