"""Stores, one module per URL scheme, imported only when their scheme is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from .._backend import Store
from .._errors import InvalidURL, MissingDriver

#: scheme -> (module, class name, extra that installs its driver, driver module)
_SCHEMES: dict[str, tuple[str, str, str | None, str]] = {
    "sqlite": ("aioabort.backends.sqlite", "SQLiteStore", None, "aiosqlite"),
    "postgresql": ("aioabort.backends.postgres", "PostgresStore", "postgres", "asyncpg"),
    "postgres": ("aioabort.backends.postgres", "PostgresStore", "postgres", "asyncpg"),
}


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def store_factory(url: object) -> Callable[[], Store]:
    """Check ``url`` and load its store's module; return a factory that makes the store.

    No I/O happens here: the store connects when it is opened.

    :raises InvalidURL: for a URL that is not a string or has an unknown scheme.
    :raises MissingDriver: when the scheme's driver is not installed (names the extra).
    """
    if not isinstance(url, str) or not url:
        raise InvalidURL(f"a store URL must be a non-empty str, got {url!r}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in _SCHEMES:
        known = ", ".join(sorted({"sqlite:///path.db", "postgresql://user@host/db"}))
        raise InvalidURL(f"unknown store URL {redact(url)!r}: expected one of {known}")
    module_name, class_name, extra, driver = _SCHEMES[scheme]
    try:
        importlib.import_module(driver)
    except ImportError as exc:
        hint = f'pip install "aioabort[{extra}]"' if extra else f"pip install {driver}"
        raise MissingDriver(
            f"the {scheme} store needs the {driver} driver, which is not installed: {hint}"
        ) from exc
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    cls.check_url(url)

    def make() -> Store:
        store: Store = cls(url)
        return store

    return make
