"""Every Python snippet in README.md and docs/ is valid Python, and every one that is a whole
program (it calls ``asyncio.run``) runs as it is and prints what its comments say."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aioabort.backends.postgres import POLL_ONLY_INTERVAL, PostgresStore

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: A snippet that includes a file (pymdownx.snippets): ``--8<-- "docs/examples/x.py"``.
_INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)
#: ``print(...)  # shown`` : what a program's print line says it prints.
_SHOWN = re.compile(r"^\s*print\(.*\)\s+#\s+(.+)$", re.MULTILINE)


def snippets() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for number, match in enumerate(_BLOCK.finditer(page.read_text("utf-8")), start=1):
            code = _INCLUDE.sub(lambda m: (ROOT / m.group(1)).read_text("utf-8"), match.group(1))
            found.append((f"{page.relative_to(ROOT)}#{number}", code))
    return found


SNIPPETS = snippets()


def test_the_pages_have_snippets() -> None:
    assert len(SNIPPETS) > 20 and any("asyncio.run(" in code for _, code in SNIPPETS)


@pytest.mark.parametrize(("where", "code"), SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_every_snippet_is_python(where: str, code: str) -> None:
    # Fragments may await at the top level (they stand for lines inside a coroutine).
    compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


PROGRAMS = [(where, code) for where, code in SNIPPETS if "asyncio.run(" in code]


@pytest.mark.parametrize(("where", "code"), PROGRAMS, ids=[w for w, _ in PROGRAMS])
def test_every_program_runs_and_prints_what_it_says(where: str, code: str, tmp_path: Path) -> None:
    """Run in an empty directory (a ``sqlite:///aioabort.db`` lands there), then again in the
    same directory, as a reader who runs it twice does (the store file is still there); the
    text after ``# `` on a print line is what the line prints, ``host:pid`` standing for this
    machine."""
    for run in ("first run", "second run"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 0, (where, run, done.stderr)
        printed, shown_lines = done.stdout.splitlines(), _SHOWN.findall(code)
        assert len(printed) >= len(shown_lines), (where, run, done.stdout)
        for shown, line in zip(shown_lines, printed, strict=False):
            pattern = re.escape(shown).replace(re.escape("host:pid"), r"[^)\s]+:\d+")
            assert re.fullmatch(pattern, line), (where, run, shown, line)


#: How the pages state a default of PostgreSQL's safety-net poll: "`poll_interval` (default
#: 5 s)", or "(default 0.5 s in this mode)" for the poll-only mode behind a transaction pooler.
_POLL_DEFAULT = re.compile(r"`poll_interval`\s+\(default\s+([0-9.]+)\s+s(\s+in\s+this\s+mode)?[;)]")


def test_the_docs_state_the_postgres_poll_interval_the_code_has() -> None:
    code = {"listening": f"{PostgresStore.poll_interval:g}", "poll-only": f"{POLL_ONLY_INTERVAL:g}"}
    stated = {
        str(page.relative_to(ROOT)): {
            ("poll-only" if poll_only else "listening", value)
            for value, poll_only in _POLL_DEFAULT.findall(page.read_text("utf-8"))
        }
        for page in PAGES
    }
    assert stated["docs/postgres.md"] >= set(code.items())
    assert ("listening", code["listening"]) in stated["docs/semantics.md"]
    wrong = {page: found for page, found in stated.items() if not found <= set(code.items())}
    assert wrong == {}, f"the code's defaults: {code}"
