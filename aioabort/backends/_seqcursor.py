"""The abort-log cursor with its gap rule (PostgreSQL; pure, no I/O).

Sequence numbers are handed out when a transaction *inserts*, not when it commits, so a poll
``WHERE seq > last`` can see 12 before 11 commits and, advancing past 11, never see it. The
cursor keeps a low-water mark below which every number was seen, remembers the numbers seen
above it, and stays below a gap until the gap fills or is older than ``gap_timeout`` (a
rolled-back transaction leaves a gap that never fills).
"""

from __future__ import annotations

from collections.abc import Iterable


class SeqCursor:
    """Which abort-log entries were delivered; where the next poll starts (:attr:`low_water`)."""

    __slots__ = ("_gaps_since", "_seen", "gap_timeout", "low_water")

    def __init__(self, low_water: int = 0, *, gap_timeout: float = 30.0) -> None:
        #: Every number up to this one was seen (or given up on): the next poll reads past it.
        self.low_water = low_water
        self.gap_timeout = gap_timeout
        self._seen: set[int] = set()  # numbers above low_water already delivered
        self._gaps_since: dict[int, float] = {}  # a missing number -> when it was noticed

    @property
    def started(self) -> bool:
        """Whether the cursor was placed (at the log's end, when watching begins)."""
        return self.low_water != 0 or bool(self._seen)

    def fresh(self, seqs: Iterable[int], now: float) -> set[int]:
        """Take the numbers a poll returned; return those not delivered before, and advance
        the low-water mark past every number seen and every gap given up on."""
        new = {seq for seq in seqs if seq > self.low_water and seq not in self._seen}
        self._seen |= new
        top = max(self._seen, default=self.low_water)
        for seq in range(self.low_water + 1, top):
            if seq not in self._seen:
                self._gaps_since.setdefault(seq, now)
        while True:
            nxt = self.low_water + 1
            if nxt in self._seen:
                self._seen.discard(nxt)
                self._gaps_since.pop(nxt, None)
            elif nxt in self._gaps_since and now - self._gaps_since[nxt] > self.gap_timeout:
                del self._gaps_since[nxt]  # rolled back (or very late): give up on it
            else:
                break
            self.low_water = nxt
        return new
