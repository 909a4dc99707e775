"""The two named-query files have the same names, apart from the ones each declares as its
own (the statements of its store's named overrides): a reader of one file can tell which
names the other lacks, and a name added to one file only is caught here."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from aioabort.backends.postgres import PostgresStore
from aioabort.backends.sqlite import QUERIES as SQLITE_QUERIES

#: PostgresStore's named overrides (request_abort, heartbeat) and a fragment of its own.
POSTGRES_ONLY = {"beat_and_lease", "notify_ended", "request_abort"}
#: SQLiteStore's named override of purge.
SQLITE_ONLY = {"purge_abort_log", "purge_labels", "purge_events"}

_DECLARED = re.compile(r"^-- dialect-only: (.*)$", re.MULTILINE)


def names() -> dict[str, set[str]]:
    return {
        "postgres": set(PostgresStore("postgresql://h/db").queries),
        "sqlite": set(SQLITE_QUERIES),
    }


def test_both_files_have_the_same_names_apart_from_the_declared_ones() -> None:
    found = names()
    assert found["postgres"] - found["sqlite"] == POSTGRES_ONLY
    assert found["sqlite"] - found["postgres"] == SQLITE_ONLY
    assert found["postgres"] - POSTGRES_ONLY == found["sqlite"] - SQLITE_ONLY


@pytest.mark.parametrize(("dialect", "own"), [("postgres", POSTGRES_ONLY), ("sqlite", SQLITE_ONLY)])
def test_each_file_declares_its_own_names_in_its_header(dialect: str, own: set[str]) -> None:
    text = resources.files("aioabort.backends.sql").joinpath(f"{dialect}.sql").read_text("utf-8")
    header = text[: text.index("-- name:")]
    declared = _DECLARED.findall(header)
    assert len(declared) == 1, header
    assert {name.strip() for name in declared[0].split(",")} == own
