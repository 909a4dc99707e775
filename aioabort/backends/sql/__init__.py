"""The named-query files of the SQL store, and their loader.

Each dialect keeps every statement the SQL store runs in one file, ``<dialect>.sql``, as
``-- name:`` blocks. Both files have the same names, the names the shared flows of
:mod:`aioabort.backends._sqlstore` run, except the ones a file declares in its header as its
own (``-- dialect-only:``): the statements of a store's named overrides, where one statement
of that dialect beats the shared flow. ``tests/test_sql_names.py`` holds both lists.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString

from ..._state import EXPIRED_MESSAGE, TaskState
from ..._types import AbortReason
from .. import _sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def load_queries(dialect: str, values: dict[str, str]) -> dict[str, LiteralString]:
    """The named queries of ``<dialect>.sql``, with ``{placeholders}`` filled from
    ``values``, or with a query named earlier in the file (a fragment several queries share,
    such as their filters). An unknown placeholder is a bug in the file, and fails loudly.

    The statements are aioabort's own: the files ship with it and the values are generated
    from its rules or checked identifiers (the schema name), never taken from input. That is
    what the ``LiteralString`` type vouches for.
    """
    text = resources.files(__package__).joinpath(f"{dialect}.sql").read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";")

        def fill(match: re.Match[str], query: str = name) -> str:
            key = match.group(1)
            found = values.get(key, queries.get(key))
            if found is None:
                raise KeyError(f"{dialect}.sql, query {query}: unknown placeholder {{{key}}}")
            return found

        queries[name] = _PLACEHOLDER.sub(fill, sql)  # vouched for: see the docstring
    return queries


def rule_values(json_object: str, error_type: str) -> dict[str, str]:
    """The placeholders both dialects share, generated from :mod:`aioabort._state` (and the
    timeline's rule, :mod:`aioabort._timeline`).

    :param json_object: the dialect's JSON object constructor, ``{}`` standing for its
        arguments (``json_object({})``, ``json_build_object({})::text``).
    :param error_type: the dialect's expression for the type in a trigger's ``NEW.error``.
    """
    return {
        "all_states": _sql.in_list(list(TaskState)),
        "running": _sql.RUNNING,
        "abortable": _sql.ABORTABLE,
        "parent_aborted": _sql.PARENT_ABORTED,
        "non_cascading": _sql.NON_CASCADING,
        "terminal": _sql.TERMINAL,
        "abort_case": _sql.abort_case(),
        "abort_ends": _sql.ABORT_ENDS,
        "columns": _sql.COLUMNS,
        "requeue_reset": _sql.requeue_reset(),
        "requeue_when": _sql.requeue_when(),
        "reaped_error": _sql.lost_error(json_object, reaped=True),
        "released_error": _sql.lost_error(json_object, reaped=False),
        "expired_code": f"'{AbortReason.EXPIRED}'",
        "expired_message": f"'{EXPIRED_MESSAGE}'",
        "timeline_requeued": _sql.timeline_requeued(error_type),
    }
