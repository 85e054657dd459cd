"""The README stays a front door and the pages' links lead somewhere.

README.md is the page a newcomer reads in five minutes: at most 250 lines, the depth in docs/. Every
relative link and image of README.md and docs/*.md names a file or folder that exists, resolved from the
page's own folder as a Markdown viewer resolves it (web links and in-page anchors are not checked). Links
inside code blocks and code spans are text, not links.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.scripts.cli_parsers import ROOT
from tests.scripts.doc_commands import code_and_prose

README_MAX_LINES = 250
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"`[^`]*`")
NOT_A_FILE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)  # https:, mailto:, #anchor


def broken_links(page: Path) -> list[str]:
    """`page:line: target` for each relative link of the page whose file or folder does not exist."""
    _, prose = code_and_prose(page.read_text(encoding="utf-8"))
    broken = []
    for number, line in prose:
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if NOT_A_FILE.match(target):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.name}:{number}: {target}")
    return broken


def test_the_readme_is_a_five_minute_page():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move the "
                                       "depth into docs/ and link it")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page), "links to nothing:\n" + "\n".join(broken_links(page))


def test_a_broken_link_is_reported_and_the_rest_are_not(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.png").write_bytes(b"")
    page = tmp_path / "docs" / "page.md"
    page.write_text("# Page\n\n"
                    "See [a](a.png), ![b](../docs/a.png \"title\"), [c](./a.png#part), [web](https://example.com),\n"
                    "[anchor](#page) and [gone](results/missing.md).\n\n"
                    "`[in a span](nowhere.md)`\n\n"
                    "    [in a code block](nowhere.md)\n", encoding="utf-8")
    assert broken_links(page) == ["page.md:4: results/missing.md"]
