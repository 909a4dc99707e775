"""The docs cite the guarantees they ship (docs/semantics.md, G1 to G16), never a design document
users cannot read: no page under docs/, no README, and no docstring or comment in aioabort/ (the
API reference renders docstrings) names "DESIGN" or a numbered "rule"."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEMANTICS = ROOT / "docs" / "semantics.md"
#: A citation of the design document: its name, or a numbered rule ("rule 11", "rules 1-3").
_DESIGN_CITATION = re.compile(r"DESIGN|\b[Rr]ules?\s+\d")
#: A guarantee's anchor in semantics.md, and a link to one from any page.
_ANCHOR = re.compile(r'<a id="(g\d+)"></a>\*\*G(\d+)\. ')
_LINK = re.compile(r"\]\(((?:docs/)?semantics\.md)?#(g\d+)\)")
_TEXT_SUFFIXES = {".md", ".py", ".html", ".txt", ".yml", ".yaml", ".css", ".js"}


def _pages() -> list[Path]:
    docs = sorted(p for p in (ROOT / "docs").rglob("*") if p.suffix in _TEXT_SUFFIXES)
    return [ROOT / "README.md", *(p for p in docs if "__pycache__" not in p.parts)]


def _citations(text: str, first_line: int = 1) -> Iterator[tuple[int, str]]:
    """Each line of ``text`` that cites the design document, numbered from ``first_line``."""
    lines = text.splitlines()
    for number in sorted({text.count("\n", 0, m.start()) for m in _DESIGN_CITATION.finditer(text)}):
        yield first_line + number, lines[number].strip()


def _docstrings_and_comments(source: str) -> Iterator[tuple[int, str]]:
    """Each comment, and each string that stands alone as a statement (docstrings, attribute
    docstrings), with its first line."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            yield node.lineno, node.value.value


def test_the_docs_and_readme_cite_no_design_document() -> None:
    found = [
        f"{page.relative_to(ROOT)}:{line}: {text}"
        for page in _pages()
        for line, text in _citations(page.read_text("utf-8"))
    ]
    assert found == [], "cite a guarantee of docs/semantics.md instead:\n" + "\n".join(found)


def test_the_docstrings_and_comments_cite_no_design_document() -> None:
    found = sorted(
        (str(module.relative_to(ROOT)), line, cited)
        for module in (ROOT / "aioabort").rglob("*.py")
        for first_line, text in _docstrings_and_comments(module.read_text("utf-8"))
        for line, cited in _citations(text, first_line)
    )
    listed = "\n".join(f"{path}:{line}: {cited}" for path, line, cited in found)
    assert found == [], "cite a guarantee of docs/semantics.md instead:\n" + listed


def test_the_guarantees_are_numbered_g1_on_with_an_anchor_each() -> None:
    anchors = _ANCHOR.findall(SEMANTICS.read_text("utf-8"))
    assert anchors == [(f"g{n}", str(n)) for n in range(1, len(anchors) + 1)]
    assert len(anchors) >= 16


def test_every_guarantee_cited_exists() -> None:
    anchors = {anchor for anchor, _ in _ANCHOR.findall(SEMANTICS.read_text("utf-8"))}
    cited = {
        (str(page.relative_to(ROOT)), anchor)
        for page in _pages()
        for target, anchor in _LINK.findall(page.read_text("utf-8"))
        if target or page == SEMANTICS
    }
    assert cited, "no page links to a guarantee"
    assert {(page, anchor) for page, anchor in cited if anchor not in anchors} == set()
