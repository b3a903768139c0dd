"""Sections of a results file that other benchmarks own: each rewrites only its own, between markers."""

from __future__ import annotations

import re
from pathlib import Path


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def kept_sections(path: Path, exclude: str | None = None) -> str:
    """Every marked section of ``path`` (but ``exclude``), to append when the file is rewritten."""
    if not path.exists():
        return ""
    found = re.findall(r"(<!-- ([\w-]+): start -->.*?<!-- \2: end -->)", path.read_text(), flags=re.S)
    return "".join(f"\n{text}\n" for text, name in found if name != exclude)


def replace_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` into ``path`` as section ``name``, replacing an earlier one, keeping the rest."""
    start, end = _markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
