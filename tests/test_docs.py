"""The documentation as a reader finds it: every page listed in docs/README.md, no page
pointing outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Loopback addresses in examples are not links out; `https://...` stands for any address, and a
# host without a dot is a name in an example (nginx's `proxy_pass http://app;`), not a site.
_URL = re.compile(
    r"https?://(?!127\.0\.0\.1|localhost|\[::1\]|0\.0\.0\.0|\.\.\.)[^\s/)>`'\";]*\.[^\s)>`'\"]+"
)
_PAGES = sorted(DOCS.glob("*.md"))


def test_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", index))
    pages = {page.name for page in _PAGES} - {"README.md"}
    assert pages - linked == set(), "add these pages to docs/README.md"
    assert {name for name in linked if "/" not in name} <= pages, "docs/README.md links a gap"


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *_PAGES], ids=lambda page: str(page.relative_to(ROOT))
)
def test_no_link_leaves_the_repository(page):
    found = _URL.findall(page.read_text())
    assert found == [], f"{page.name} links outside the repository: {found}"
