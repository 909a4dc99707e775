"""What a schema's ``CREATE TABLE`` statements say each table's columns are: the check that
an existing store has every column today's statements read, whatever its version stamp says;
and the schema's statements, one by one.

Pure text work on the dialect's own ``schema`` query (never on input), unit-tested alone.
"""

from __future__ import annotations

import re

_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS\s+([\w.]+)\s*\(", re.IGNORECASE)
#: A table's parts that are constraints, not columns.
_CONSTRAINT = re.compile(r"(PRIMARY\s+KEY|UNIQUE|CHECK|CONSTRAINT|FOREIGN\s+KEY)\b", re.IGNORECASE)


def table_columns(schema: str) -> dict[str, dict[str, str]]:
    """Each table the ``schema`` statements create, with its columns: ``{table: {column:
    definition}}``, the definition as written (``beats INTEGER NOT NULL DEFAULT 0``), in order.
    """
    tables: dict[str, dict[str, str]] = {}
    for match in _CREATE_TABLE.finditer(schema):
        body = _parenthesised(schema, match.end())
        columns: dict[str, str] = {}
        for part in _split_top_level(body):
            definition = " ".join(part.split())
            if definition and not _CONSTRAINT.match(definition):
                columns[definition.split()[0]] = definition
        tables[match.group(1)] = columns
    return tables


def _parenthesised(text: str, start: int) -> str:
    """The text from ``start`` (just after an opening parenthesis) to its closing one."""
    depth = 1
    for at in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[at], 0)
        if depth == 0:
            return text[start:at]
    raise ValueError("unbalanced parentheses in the schema")


def _split_top_level(body: str) -> list[str]:
    """``body`` split at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for at, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:at])
            start = at + 1
    parts.append(body[start:])
    return parts


def statements(schema: str) -> list[str]:
    """The statements of ``schema``, split at the semicolons that end them: not those inside
    a trigger's ``BEGIN ... END`` (SQLite) or a function's ``$$ ... $$`` (PostgreSQL)."""
    found, current, depth, quoted = [], [], 0, False
    for line in schema.splitlines():
        current.append(line)
        words = line.strip().upper()
        if line.count("$$") % 2:
            quoted = not quoted
        if words == "BEGIN" or words.endswith(" BEGIN"):
            depth += 1
        elif words in ("END;", "END"):
            depth = max(0, depth - 1)
        if line.rstrip().endswith(";") and not quoted and depth == 0:
            found.append("\n".join(current).strip().rstrip(";"))
            current = []
    rest = "\n".join(current).strip().rstrip(";")
    return [*(f for f in found if f), *([rest] if rest else [])]
