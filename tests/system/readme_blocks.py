"""The README's install steps, taken from its own code blocks, so the README cannot drift from
what the system test runs.

A section is the text under a heading up to the next heading of any level; its steps are its
indented (four-space) code blocks, in order. Fenced blocks are examples of output, not steps.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = re.compile(r"^#{1,6} ")
INDENT = "    "


def section_blocks(markdown: str, heading: str) -> list[str]:
    """The indented code blocks directly under `heading`, a whole heading line such as
    `#### The policy` (its subsections excluded)."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        raise LookupError(f"no heading {heading!r}")
    blocks: list[str] = []
    current: list[str] = []
    fenced = False
    previous_blank = True
    for line in lines[start + 1 :]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and HEADING.match(line):
            break
        if not fenced and line.startswith(INDENT) and (current or previous_blank):
            current.append(line.removeprefix(INDENT))
        elif current and not line.strip():
            current.append("")
        elif current:
            blocks.append("\n".join(current).strip("\n"))
            current = []
        previous_blank = not line.strip()
    if current:
        blocks.append("\n".join(current).strip("\n"))
    return blocks


def install_script(*headings: str, readme: Path = README) -> str:
    """The code blocks of the sections under `headings`, in that order, as one shell script."""
    text = readme.read_text()
    parts: list[str] = []
    for heading in headings:
        blocks = section_blocks(text, heading)
        if not blocks:
            raise LookupError(f"{readme.name}: no code block under {heading!r}")
        parts.append(f"# --- README.md: {heading}")
        parts.extend(blocks)
    return "\n".join(parts) + "\n"
