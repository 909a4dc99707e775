"""What a PostgreSQL URL asks for, and what the driver's errors mean.

:func:`store_error` is the one mapping from an asyncpg (or socket) error to aioabort's error
tree; :func:`mapped_errors` applies it to a block, as httpx's ``map_exceptions`` does. Every
place that catches the driver's errors goes through one of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ..._errors import AioabortError, InvalidURL, StoreError, StoreUnavailable
from .. import mangled_userinfo, redact

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCHEMA_PARAM = "aioabort_schema"
_POOLER_PARAM = "aioabort_pooler"
#: New work on a queue is notified on the channel of this prefix and a hash of schema and queue.
QUEUE_PREFIX = "aioabort_q_"
#: The ``application_name`` of the listener's connection (``pg_stat_activity`` shows it),
#: unless the URL names one.
LISTENER_NAME = "aioabort listener"

#: SQLSTATEs that mean the server ended the session: admin/crash shutdown, cannot connect now.
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


def connection_unusable(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection (or the server) cannot be used any more, so the
    statement is worth retrying on a fresh one: decided by what the error means, not by a list
    of the driver's classes that a new release could outgrow.

    * the socket failed (``OSError``), or the driver says the connection is closed, busy or in
      a state it cannot leave (``InterfaceError``, ``InternalClientError``: "another operation
      is in progress" after the server's goodbye was read mid-statement);
    * the server answered with a connection exception (SQLSTATE class 08) or that it is
      shutting down or starting (57P01-57P03).

    A statement the server refused for what it says (a constraint, a syntax error) is not.
    """
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        return sqlstate.startswith("08") or sqlstate in _SERVER_GONE
    return False


def store_error(exc: BaseException, url: str, *, connecting: bool = False) -> StoreError:
    """The aioabort error that the driver's error ``exc`` means, to be raised from it.

    :param url: the store's URL as shown (:func:`aioabort.backends.redact`).
    :param connecting: ``exc`` came from opening a connection: whatever it says, the store
        is unavailable (a wrong password, a missing database, a refused connection).
    :returns: :class:`StoreUnavailable` when the server cannot be reached or used (a lost
        connection, a timeout, a server shutting down), :class:`StoreError` otherwise.
    """
    detail = f"{type(exc).__name__}: {exc}"
    if connecting:
        return StoreUnavailable(f"cannot connect to the PostgreSQL store {url}: {detail}")
    if isinstance(exc, TimeoutError) or connection_unusable(exc):
        return StoreUnavailable(f"the PostgreSQL store {url} is unreachable: {detail}")
    return StoreError(f"PostgreSQL error: {detail}")


@contextlib.contextmanager
def mapped_errors(url: str, *, connecting: bool = False) -> Iterator[None]:
    """Raise the driver's errors in the block as :func:`store_error` maps them, from the
    driver's; aioabort's own errors pass as they are."""
    try:
        yield
    except AioabortError:
        raise
    except Exception as exc:
        raise store_error(exc, url, connecting=connecting) from exc


def parse_url(url: str) -> tuple[str, str]:
    """Split ``url`` into the DSN asyncpg gets and the schema name aioabort uses.

    :raises InvalidURL: for a URL asyncpg would refuse or misread; the message never shows a
        password.
    """
    dsn, schema, _ = parse_options(url)
    return dsn, schema


def parse_options(url: str) -> tuple[str, str, bool]:
    """:func:`parse_url`, and whether the URL says it goes through a transaction pooler
    (``aioabort_pooler=transaction``; ``session``, the default, needs nothing special)."""
    parts = _split(url)
    schema, pooler = "aioabort", "session"
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == _SCHEMA_PARAM:
            schema = value
        elif key == _POOLER_PARAM:
            pooler = value
        else:
            kept.append((key, value))
    if pooler not in ("session", "transaction"):
        raise InvalidURL(
            f"{_POOLER_PARAM} must be 'session' (the default: PostgreSQL itself, or a pooler in "
            f"session mode) or 'transaction' (a transaction-pooling PgBouncer), got {pooler!r}"
        )
    if not _SCHEMA_RE.fullmatch(schema):
        raise InvalidURL(
            f"{_SCHEMA_PARAM} must be a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 63 "
            f"characters), got {schema!r}"
        )
    dsn = urlunsplit(parts._replace(query=urlencode(kept)))
    return dsn, schema, pooler == "transaction"


def _split(url: str) -> SplitResult:
    """``url``'s parts, once it is known to be a PostgreSQL URL asyncpg reads as written."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise InvalidURL(f"cannot parse the PostgreSQL URL {redact(url)!r}: {exc}") from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise InvalidURL(f"not a PostgreSQL URL: {redact(url)!r}")
    if mangled_userinfo(url):
        raise InvalidURL(
            "the PostgreSQL URL's user or password contains an unencoded '/', '?' or '#': "
            "percent-encode them (%2F, %3F, %23), e.g. with urllib.parse.quote(password, safe='')"
        )
    if "," not in parts.netloc:  # one host: its port must be a number (asyncpg: ValueError)
        try:
            parts.port  # noqa: B018 - urllib validates the port when it is read
        except ValueError:
            raise InvalidURL(
                f"the port in the PostgreSQL URL {redact(url)!r} is not a number from 0 to 65535"
            ) from None
    return parts


def names_application(dsn: str) -> bool:
    """Whether the DSN sets the connection's ``application_name`` itself."""
    return any(key == "application_name" for key, _ in parse_qsl(urlsplit(dsn).query))


def queue_channel(schema: str, queue: str) -> str:
    """The channel new work on ``queue`` is notified on (as ``postgres.sql`` names it):
    short enough for any queue name, apart for each schema."""
    digest = hashlib.md5(f"{schema}:{queue}".encode(), usedforsecurity=False)
    return QUEUE_PREFIX + digest.hexdigest()[:20]
