"""One capped exponential backoff, for every loop that waits before trying again."""

from __future__ import annotations


class Backoff:
    """Delays that double from ``first`` up to ``cap`` seconds; :meth:`reset` after a success.

    Example::

        backoff = Backoff(0.1, 5.0)
        while not await try_once():
            await asyncio.sleep(backoff.next())
    """

    __slots__ = ("_delay", "cap", "first")

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._delay = first

    def next(self) -> float:
        """The delay to wait now; the one after it doubles (up to ``cap``)."""
        delay = self._delay
        self._delay = min(delay * 2, self.cap)
        return delay

    def peek(self) -> float:
        """The delay :meth:`next` would return, without moving on."""
        return self._delay

    def reset(self) -> None:
        self._delay = self.first
