"""The README is a front door and the docs pages hold the rest: every relative markdown
link in README.md and docs/ points to a file that exists (and, with ``#anchor``, to a
heading of it), every docs page is reachable from README.md or docs/README.md, and the
README stays short."""
import glob
import os
import re

from tests.helpers import REPO

LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
README_MAX_LINES = 250


def _pages() -> list[str]:
    """README.md and every markdown page under docs/, relative to the repository."""
    return ["README.md"] + sorted(glob.glob("docs/**/*.md", root_dir=REPO, recursive=True))


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (which may hold brackets)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", open(path).read(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def _links(page: str) -> list[tuple[str, str]]:
    """(target path relative to the repository, anchor) of each relative link of ``page``."""
    out = []
    for target in LINK.findall(_prose(open(os.path.join(REPO, page)).read())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        out.append((full, anchor))
    return out


def test_every_relative_link_points_to_an_existing_file_and_heading():
    pages = _pages()
    broken, checked = [], 0
    for page in pages:
        for target, anchor in _links(page):
            checked += 1
            path = os.path.join(REPO, target)
            if not os.path.exists(path):
                broken.append((page, target, "no such file"))
            elif anchor and target.endswith(".md") and anchor not in _anchors(path):
                broken.append((page, f"{target}#{anchor}", "no such heading"))
    assert len(pages) > 10 and checked > 50 and not broken, broken


def test_every_docs_page_is_linked_from_the_readme_or_the_docs_index():
    linked = {t for page in ("README.md", "docs/README.md") for t, _ in _links(page)}
    pages = glob.glob("docs/*.md", root_dir=REPO) + glob.glob("docs/methods/*.md", root_dir=REPO)
    orphans = sorted(p for p in pages if p not in linked and p != "docs/README.md")
    assert not orphans, orphans


def test_readme_is_a_front_door():
    """At most 250 lines; the two commands, the load_run example and the docs index."""
    text = open(os.path.join(REPO, "README.md")).read()
    assert len(text.splitlines()) <= README_MAX_LINES
    for needed in ("make demo", "make test", "from jaxhybrid import load_run",
                   "(docs/architecture.md)", "(docs/README.md)", "Where is X?",
                   "benchmarks/device_suite.py", "jaxhybrid.tools.lower"):
        assert needed in text, needed
