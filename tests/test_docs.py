"""The README and the docs site hold together: every relative link and picture points at a
file in the checkout, and the README stays a short front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
# [text](target), ![alt](target), and <img src="target"> / <a href="target">
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""")
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def relative_targets(text: str) -> list[str]:
    """The relative link and image targets of a Markdown page, anchors dropped; links
    inside code are examples, not links."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = MARKDOWN_LINK.findall(prose) + HTML_LINK.findall(prose)
    return [target.split("#")[0] for target in targets
            if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")]


def broken_links(page: Path) -> list[str]:
    return [target for target in relative_targets(page.read_text())
            if not (page.parent / target).exists()]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_image_exists(page):
    assert broken_links(page) == []


def test_a_broken_link_or_image_is_found(tmp_path):
    (tmp_path / "there.md").write_text("# there\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#top) [gone](missing.md) ![pic](gone.png)\n"
                    '<img src="also-gone.png"> [web](https://example.org) [here](#top)\n'
                    "`[code](not-a-link.md)`\n```\n[fenced](not-a-link.md)\n```\n")
    assert broken_links(page) == ["missing.md", "gone.png", "also-gone.png"]


def test_readme_stays_a_short_front_door():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_docs_page_is_in_the_site_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [page.name for page in PAGES[1:] if f": {page.name}" not in nav]
    assert missing == []
