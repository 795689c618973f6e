"""Every relative link in README.md and docs/*.md points to a file that exists, and every #anchor to a heading
(GitHub's slug of it) or an explicit id in that file; and the README keeps the quick start's two commands."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_ID = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markdown links reduced to their text, lower case, punctuation dropped
    (letters, digits, '_' and '-' kept), spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors a page offers: its headings' slugs (repeats numbered -1, -2, ... as GitHub does) and ids."""
    found, seen = set(), {}
    lines = prose(page.read_text())
    for line in lines:
        m = _HEADING.match(line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            found.add(s if n == 0 else f"{s}-{n}")
        found.update(_ID.findall(line))
    return found


def links(page: Path) -> list[str]:
    return [t for line in prose(page.read_text()) for t in _LINK.findall(_CODE.sub("", line))]


def test_slugs_follow_github():
    assert slug("2. ERA5 data in the FourCastNet layout") == "2-era5-data-in-the-fourcastnet-layout"
    assert slug("The stochastic model (model uncertainty)") == "the-stochastic-model-model-uncertainty"
    assert slug("Zarr stores (`output.format: zarr`)") == "zarr-stores-outputformat-zarr"
    assert slug("ecCodes: installing it") == "eccodes-installing-it"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading or id '{anchor}' in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_leads_with_the_two_commands():
    """The quick start's commands, the built-in world and the rank count are on the README's first screen."""
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    for text in ("make ensemble", "make test", "built-in", "shallow-water", "NP="):
        assert text in first_screen, text
