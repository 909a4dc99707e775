"""Stores, one module per URL scheme, imported only when their scheme is used."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote_plus, urlsplit

from .._backend import Store
from .._errors import InvalidURL, UsageError
from .._schemes import Scheme, load

#: scheme -> where its store lives; filled by register_scheme().
_SCHEMES: dict[str, Scheme] = {}


def register_scheme(
    scheme: str, target: str, *, extra: str | None = None, driver: str | None = None
) -> None:
    """Make ``App("scheme://...")`` use the :class:`~aioabort.Store` subclass ``target``
    (``"package.module:ClassName"``, imported only when a URL of that scheme is used).

    :param extra: the pip extra that installs its driver, named in :class:`MissingDriver`.
    :param driver: the driver's module name, imported first so a missing one says so.
    :raises UsageError: for a malformed scheme or target.
    """
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme or ""):
        raise UsageError(f"a URL scheme is lowercase letters, digits, '+', '.', '-': {scheme!r}")
    if not re.fullmatch(r"[\w.]+:\w+", target or ""):
        raise UsageError(f"a store target looks like 'package.module:ClassName': {target!r}")
    _SCHEMES[scheme] = Scheme(target, extra, driver)


register_scheme("sqlite", "aioabort.backends.sqlite:SQLiteStore", driver="aiosqlite")
register_scheme(
    "postgresql", "aioabort.backends.postgres:PostgresStore", extra="postgres", driver="asyncpg"
)
register_scheme(
    "postgres", "aioabort.backends.postgres:PostgresStore", extra="postgres", driver="asyncpg"
)
register_scheme("memory", "aioabort.testing:MemoryStore")


#: Query parameters asyncpg (libpq) reads a secret from.
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def mangled_userinfo(url: str) -> bool:
    """Whether ``url``'s user or password holds an unencoded ``/``, ``?`` or ``#``.

    Such a character ends the authority early, so the rest of the password lands in the path,
    query or fragment, where no redaction would find it. The telltale is an ``@`` after the
    authority (in a query, before any ``=``: a value such as ``user=a@b`` is fine).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return True
    if "@" in parts.netloc:
        return False
    before_value = parts.query.split("=", 1)[0] if "=" in parts.query else parts.query
    return "@" in parts.path or "@" in parts.fragment or "@" in before_value


def redact(url: str) -> str:
    """``url`` with every secret replaced by ``***``, for messages and logs: the password in
    the authority and ``password=``/``sslpassword=`` query parameters. Everything else is
    kept as written (``sqlite:///x.db`` stays ``sqlite:///x.db``), so what is shown is a URL
    the App accepts. A URL whose user or password is not percent-encoded shows only its
    scheme."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.netloc and mangled_userinfo(url):  # no authority (sqlite:///), no password
        return f"{parts.scheme}://<hidden: unencoded characters in the user or password>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    # Rebuilt by hand: urlunsplit drops the empty authority of sqlite:///x.db (sqlite:/x.db).
    shown = f"{parts.scheme}:" if parts.scheme else ""
    if (url.split(":", 1)[1] if parts.scheme else url).startswith("//"):
        shown += f"//{netloc}"
    shown += parts.path
    if parts.query:
        shown += "?" + "&".join(_redact_pair(pair) for pair in parts.query.split("&"))
    return f"{shown}#{parts.fragment}" if parts.fragment else shown


def _redact_pair(pair: str) -> str:
    """One ``key=value`` of a query, its value hidden when the key names a secret."""
    key = pair.split("=", 1)[0]
    return f"{key}=***" if unquote_plus(key).lower() in _SECRET_PARAMS else pair


def store_factory(url: object) -> Callable[[float | None], Store]:
    """Check ``url`` and load its store's module; return a factory that makes the store
    (given the App's ``poll_interval``). No I/O happens here: the store connects when it is
    opened.

    :raises InvalidURL: for a URL that is not a string or has an unknown scheme.
    :raises MissingDriver: when the scheme's driver is not installed (names the extra).
    """
    if not isinstance(url, str) or not url:
        raise InvalidURL(f"a store URL must be a non-empty str, got {url!r}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in _SCHEMES:
        known = ", ".join(sorted({"sqlite:///path.db", "postgresql://user@host/db"}))
        raise InvalidURL(f"unknown store URL {redact(url)!r}: expected one of {known}")
    cls: type[Store] = load(scheme, _SCHEMES[scheme], what="store", driver_is="driver", base=Store)
    cls.check_url(url)

    def make(poll_interval: float | None) -> Store:
        store: Store = cls.from_url(url, poll_interval=poll_interval)
        return store

    return make
