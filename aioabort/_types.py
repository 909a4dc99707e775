"""Small value types shared by every layer: abort reasons, task errors and id checks.

Nothing here does I/O or imports anything beyond the standard library and ``_errors``.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

from ._errors import (
    InvalidOption,
    InvalidReason,
    InvalidTaskId,
    InvalidText,
    NotJSONSerializable,
    UsageError,
)

#: What aioabort stores as arguments, results and error details: plain JSON values.
JSONValue: TypeAlias = (
    bool | int | float | str | Sequence["JSONValue"] | Mapping[str, "JSONValue"] | None
)

#: Longest task id accepted, in characters.
MAX_TASK_ID_LENGTH = 200
#: Longest abort message accepted, in characters.
MAX_REASON_MESSAGE_LENGTH = 2000
#: Longest ``by`` (who asked for the abort) accepted, in characters.
MAX_REASON_BY_LENGTH = 200
#: Longest task name accepted, in characters.
MAX_TASK_NAME_LENGTH = 200

_CODE_RE = re.compile(r"[a-z][a-z0-9_.-]{0,31}")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def default_by() -> str:
    """Who this process is, for ``AbortReason.by`` when the caller names nobody."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


#: The largest offset a listing accepts (any more would overflow the stores' integers).
MAX_OFFSET = 10**9

#: Labels a record may carry, and the length of a key and of a value.
MAX_LABELS = 20
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 200
_LABEL_KEY = re.compile(rf"[A-Za-z0-9_.:/-]{{1,{MAX_LABEL_KEY}}}")


def check_labels(labels: object) -> dict[str, str]:
    """``labels`` as a dict, if they are usable: at most 20 ``str`` keys of letters, digits and
    ``_.:/-`` (1-64 characters) with ``str`` values of at most 200 printable characters.

    :raises UsageError: otherwise (before anything is written).
    """
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise UsageError(f"labels must be a dict of str to str, got {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise UsageError(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise UsageError(
                f"a label key must be 1-{MAX_LABEL_KEY} letters, digits or _.:/- characters, "
                f"got {key!r}"
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or not value.isprintable():
            raise UsageError(
                f"the value of label {key!r} must be a str of at most {MAX_LABEL_VALUE} "
                "printable characters"
            )
    return dict(labels)


def parse_labels(values: Iterable[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (the CLI's ``--label``, the router's ``label=``) as a dict: a
    later key wins; the value may hold ``=`` or be empty.

    :raises UsageError: for a string without ``=``, or with nothing before it.
    """
    labels: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise UsageError(f"a label must be KEY=VALUE, got {value!r}")
        labels[key] = text
    return labels


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a usable task id, else raise :class:`InvalidTaskId`.

    A task id is a non-empty string of at most :data:`MAX_TASK_ID_LENGTH` characters, with no
    NUL, control characters or unpaired surrogates (it must round-trip through every store).
    """
    if not isinstance(task_id, str):
        raise InvalidTaskId(f"a task id must be a str, not {type(task_id).__name__}")
    if not task_id:
        raise InvalidTaskId("a task id must not be empty")
    if len(task_id) > MAX_TASK_ID_LENGTH:
        raise InvalidTaskId(
            f"a task id must be at most {MAX_TASK_ID_LENGTH} characters, got {len(task_id)}"
        )
    if task_id.isascii() and task_id.isprintable():
        return task_id  # the common case, checked in C (a per-character loop costs ~3 µs)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in task_id):
        raise InvalidTaskId(f"a task id must not contain control characters: {task_id!r}")
    if _has_surrogates(task_id):
        raise InvalidTaskId(f"a task id must be valid Unicode text: {task_id!r}")
    return task_id


def check_text(
    value: object, what: str, limit: int, *, error: type[UsageError] = InvalidText
) -> str:
    """Return ``value`` if it is text every store holds the same: a ``str`` of at most
    ``limit`` characters with no NUL and no unpaired surrogate (SQLite cannot encode one,
    PostgreSQL refuses NUL). Every place that takes text from a caller checks it here, at the
    call, so bad input never reaches a store (nor fails another caller's write with it).

    :raises InvalidText: otherwise (or ``error``, where the caller names another).
    """
    if not isinstance(value, str):
        raise error(f"{what} must be a str, not {type(value).__name__}")
    if len(value) > limit:
        raise error(f"{what} must be at most {limit} characters, got {len(value)}")
    if "\x00" in value or _has_surrogates(value):
        raise error(f"{what} must be valid text without NUL characters: {value!r}")
    return value


#: Longest task key accepted (``apply(key=...)``), in characters.
MAX_KEY_LENGTH = 200


def check_key(key: object) -> str:
    """Return ``key`` if it is a usable task key: a ``str`` of 1 to :data:`MAX_KEY_LENGTH`
    printable characters (``"report:alice"``).

    :raises InvalidOption: otherwise (before anything is written).
    """
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidOption(
            f"a key must be a str of 1-{MAX_KEY_LENGTH} printable characters, got {key!r}"
        )
    return key


def check_name(name: object) -> str:
    """A task name (given to a task, a record, or a filter), checked by :func:`check_text`."""
    return check_text(name, "a task name", MAX_TASK_NAME_LENGTH)


@dataclass(frozen=True, slots=True)
class AbortReason:
    """Why a task was asked to stop: structured data, stored on the record.

    :param code: a short machine-readable word; aioabort itself uses ``user``, ``timeout``,
        ``shutdown``, ``disconnect``, ``parent``, ``expired`` and ``superseded``.
    :param message: free text for people.
    :param by: who asked (a user, a host and pid); filled in by :meth:`AbortHandle.abort`.
    :param at: when the abort was requested, an aware UTC datetime.

    Example::

        await handle.abort(AbortReason("timeout", "report took longer than 5 minutes"))
    """

    code: str = "user"
    message: str = ""
    by: str | None = None
    at: datetime = field(default_factory=utcnow)

    USER = "user"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    DISCONNECT = "disconnect"
    PARENT = "parent"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _CODE_RE.fullmatch(self.code):
            raise InvalidReason(
                f"an abort code must be a lowercase word of 1-32 characters "
                f"([a-z][a-z0-9_.-]*), got {self.code!r}"
            )
        check_text(self.message, "an abort message", MAX_REASON_MESSAGE_LENGTH, error=InvalidReason)
        if self.by is not None:
            check_text(self.by, "'by'", MAX_REASON_BY_LENGTH, error=InvalidReason)
        if not isinstance(self.at, datetime) or self.at.tzinfo is None:
            raise InvalidReason("'at' must be an aware datetime")

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-ready dict: ``code``, ``message``, ``by``, ``at`` (ISO 8601)."""
        return {
            "code": self.code,
            "message": self.message,
            "by": self.by,
            "at": self.at.isoformat(),
        }

    def __str__(self) -> str:
        text = reason_text(self)
        return text if self.by is None else f"{text} (by {self.by})"


def reason_text(reason: AbortReason | None) -> str:
    """``code: message`` of an abort (the code alone without a message; ``unknown`` for
    none): what a log line, a timeline event and ``str(reason)`` say of it."""
    if reason is None:
        return "unknown"
    return reason.code if not reason.message else f"{reason.code}: {reason.message}"


def coerce_reason(reason: str | AbortReason | None, by: str | None) -> AbortReason:
    """Turn what :meth:`AbortHandle.abort` accepts into an :class:`AbortReason`.

    A string becomes the message of a ``user`` reason. ``by`` fills in a reason that names nobody.
    """
    if reason is None:
        reason = AbortReason()
    elif isinstance(reason, str):
        reason = AbortReason(AbortReason.USER, reason)
    elif not isinstance(reason, AbortReason):
        raise InvalidReason(f"reason must be a str or an AbortReason, not {type(reason).__name__}")
    if reason.by is None:
        by = default_by() if by is None else by
        reason = AbortReason(reason.code, reason.message, by, reason.at)
    return reason


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """How a task that ended FAILURE failed: data, found on ``record.error`` (and on
    :class:`TaskFailed`, the exception ``handle.result()`` raises).

    :param cause: ``exception`` (the body raised), ``cancelled`` (an outer cancellation such as a
        caller's timeout stopped it), ``lost`` (its owner process stopped heartbeating), or
        ``killed`` (its worker exited while it still ran, after it ignored its abort).
    :param type: the exception's class name, where there was one.
    :param message: a human-readable description.
    """

    cause: str
    type: str
    message: str

    EXCEPTION = "exception"
    CANCELLED = "cancelled"
    LOST = "lost"
    KILLED = "killed"

    def __str__(self) -> str:
        return (
            f"{self.cause}: {self.type}: {self.message}"
            if self.type
            else (f"{self.cause}: {self.message}")
        )

    def to_json(self) -> str:
        return json.dumps({"cause": self.cause, "type": self.type, "message": self.message})

    @classmethod
    def from_json(cls, text: str) -> ErrorInfo:
        data = json.loads(text)
        return cls(str(data["cause"]), str(data.get("type", "")), str(data.get("message", "")))

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        return cls(cls.EXCEPTION, type(exc).__qualname__, str(exc)[:MAX_REASON_MESSAGE_LENGTH])


#: Largest JSON document accepted for a task's arguments or result, in bytes.
MAX_JSON_BYTES = 1024 * 1024


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _keys_are_text(value: Any) -> bool:
    """Whether every dict in ``value`` has string keys: ``json`` would turn any other key
    into a string, so the document would not come back equal."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return True


def dump_json(value: Any, what: str) -> str:
    """Serialise ``value`` as strict JSON, or raise :class:`NotJSONSerializable`.

    Refused: anything ``json`` cannot encode, NaN and infinities, values that would not come
    back equal (non-string dict keys), and documents over :data:`MAX_JSON_BYTES`.
    """
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise NotJSONSerializable(f"{what} must be JSON-serialisable: {exc}") from exc
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise NotJSONSerializable(f"{what} must be valid Unicode text: {exc}") from exc
    if size > MAX_JSON_BYTES:
        raise NotJSONSerializable(
            f"{what} must be at most {MAX_JSON_BYTES:,} bytes of JSON, got {size:,}"
        )
    if "{" in text and not _keys_are_text(value):  # no brace, no dict to check
        raise NotJSONSerializable(
            f"{what} would not survive a JSON round trip unchanged (dict keys must be strings)"
        )
    return text
