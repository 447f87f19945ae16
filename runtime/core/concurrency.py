"""Concurrency helpers every layer may use."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import anyio

__all__ = ["gather", "send_all"]

T = TypeVar("T")


async def send_all(stream: Any, items: Iterable[Any]) -> None:
    """Send ``items`` to a memory object stream in order, waiting only when it is full
    (``send_nowait`` first: no checkpoint per item while the consumer keeps up)."""
    for item in items:
        try:
            stream.send_nowait(item)
        except anyio.WouldBlock:
            await stream.send(item)


async def gather(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await ``calls`` concurrently in a task group; results in argument order.

    The first error is re-raised as itself (not as an ``ExceptionGroup``) so the
    episode records the boundary it crossed.
    """
    pending = list(calls)
    results: list[Any] = [None] * len(pending)

    async def one(i: int, call: Awaitable[T]) -> None:
        results[i] = await call

    try:
        async with anyio.create_task_group() as tg:
            for i, call in enumerate(pending):
                tg.start_soon(one, i, call)
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None
    return results


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
