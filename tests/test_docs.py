"""The documentation holds together: the README stays a front page, every relative link in it and in
docs/ (a file, and the heading an anchor names) resolves, and the settings table names every setting.

Anchors are GitHub's: a heading's text, lower-cased, without punctuation (backticks, dots, commas,
parentheses), spaces as hyphens, ``-1``, ``-2`` ... for repeats. Links and headings inside fenced code blocks
do not count, nor links inside inline code.
"""
from __future__ import annotations

import re
from pathlib import Path

from support import settings_read_by_code, settings_table

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
SETTINGS_DOC = ROOT / "docs" / "configuration.md"
# Settings in the table that config.Settings does not read, and the module that reads each.
READ_ELSEWHERE = {"GEOETL_FAULTS": "engine_faults.py", "LOCAL_HOST_BLOB_EVENTS": "local_host_blobs.py",
                  "LOCAL_HOST_BLOB_POLL_SECONDS": "local_host_blobs.py", "LOCAL_HOST_LEASE_SECONDS": "local_host.py",
                  "PYTHON_THREADPOOL_THREAD_COUNT": "local_host_worker.py"}
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.I)


def documents() -> list[Path]:
    """Every Markdown file of the project's documentation."""
    return [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "benchmarks" / "README.md",
            *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors a Markdown text defines: its headings' (outside code blocks) and explicit <a id=...>."""
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """Relative links of ``path`` whose file does not exist or whose anchor names no heading there."""
    text = path.read_text() if text is None else text
    problems = []
    for target in LINK.findall(INLINE_CODE.sub("code", FENCE.sub("", text))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination.read_text()):
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such heading in {destination.name}")
    return problems


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_relative_link_resolves():
    problems = [problem for path in documents() for problem in broken_links(path)]
    assert not problems, "\n".join(problems)


def test_the_link_check_can_fail():
    """A planted broken file link and a planted broken anchor are both found; good ones are not."""
    readme = ROOT / "README.md"
    planted = ("[a](docs/architecture.md#leases) [b](docs/no-such-page.md) [c](docs/architecture.md#no-such-part) "
               "`[d](nowhere.md)` [e](https://example.org/x.md) [f](#map-of-the-root)\n"
               "```\n[g](nowhere-in-a-fence.md)\n```\n")
    assert broken_links(readme, planted) == [
        "README.md: docs/no-such-page.md: no such file",
        "README.md: docs/architecture.md#no-such-part: no such heading in architecture.md",
    ]


def test_anchors_follow_github():
    assert slug("Group commit (`engine_group_commit.py`)") == "group-commit-engine_group_commitpy"
    assert slug("Exactly once, O(1) per task") == "exactly-once-o1-per-task"
    assert anchors("# A\n## A\n```\n# B\n```\n") == {"a", "a-1"}


def test_the_settings_table_names_every_setting():
    documented, read = set(settings_table()), settings_read_by_code()
    assert not read - documented, f"settings config.py reads that {SETTINGS_DOC.name} does not list"
    assert documented - read == set(READ_ELSEWHERE), "a listed setting nobody reads (or say which module does)"
    for name, module in READ_ELSEWHERE.items():
        assert name in (ROOT / module).read_text(), f"{module} no longer reads {name}"
