"""The abort-log cursor's gap rule, without a database: a late commit is never skipped."""

from __future__ import annotations

from aioabort.backends._seqcursor import SeqCursor


def test_consecutive_numbers_advance_the_cursor() -> None:
    cursor = SeqCursor(10)
    assert cursor.fresh([11, 12, 13], now=0.0) == {11, 12, 13}
    assert cursor.low_water == 13
    assert cursor.fresh([11, 12, 13], now=0.0) == set()  # already delivered


def test_the_cursor_waits_below_a_gap_until_it_fills() -> None:
    cursor = SeqCursor(10, gap_timeout=30)
    assert cursor.fresh([12, 13], now=0.0) == {12, 13}
    assert cursor.low_water == 10  # 11 may still commit: the next poll reads past 10 again
    assert cursor.fresh([12, 13], now=1.0) == set()  # seen ones are not delivered twice
    assert cursor.fresh([11, 12, 13], now=2.0) == {11}  # the late commit arrives
    assert cursor.low_water == 13


def test_a_gap_older_than_the_timeout_is_given_up() -> None:
    cursor = SeqCursor(0, gap_timeout=30)
    cursor.low_water = 5
    assert cursor.fresh([7], now=0.0) == {7}
    assert cursor.low_water == 5
    assert cursor.fresh([7], now=29.0) == set()
    assert cursor.low_water == 5
    cursor.fresh([], now=31.0)  # a rolled-back transaction: 6 never comes
    assert cursor.low_water == 7


def test_started_means_placed() -> None:
    assert not SeqCursor().started
    assert SeqCursor(3).started
