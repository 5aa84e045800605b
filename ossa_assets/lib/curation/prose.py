"""Prose documents (Markdown, reStructuredText, AsciiDoc, plain text), chunked by section."""

from __future__ import annotations

import re

from ossa_assets.lib.curation.common import ParsedDocument, Rejected, Unit, spdx_license

PROSE_SUFFIXES = (".md", ".markdown", ".rst", ".adoc", ".asciidoc", ".txt")

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_ADOC_HEADING = re.compile(r"^(={1,6})\s+(.+?)\s*$")
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")
MIN_WORDS = 5
MAX_SECTION_CHARS = 8_000  # longer sections are split at paragraph boundaries


def _sections(text: str, suffix: str) -> list[tuple[str, int, str]]:
    """(heading, level, body) in document order; text before the first heading is level 0."""
    lines = text.split("\n")
    out: list[tuple[str, int, list[str]]] = [("", 0, [])]
    in_fence = False
    rst_levels: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if suffix in (".md", ".markdown") and line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        heading: tuple[str, int] | None = None
        if not in_fence:
            if suffix in (".md", ".markdown"):
                m = _MD_HEADING.match(line)
                if m:
                    heading = (m.group(2), len(m.group(1)))
            elif suffix in (".adoc", ".asciidoc"):
                m = _ADOC_HEADING.match(line)
                if m:
                    heading = (m.group(2), len(m.group(1)))
            elif suffix == ".rst" and line.strip() and i + 1 < len(lines):
                m = _RST_UNDERLINE.match(lines[i + 1])
                if m and len(lines[i + 1].rstrip()) >= len(line.rstrip()) and not _RST_UNDERLINE.match(line):
                    ch = m.group(1)
                    if ch not in rst_levels:
                        rst_levels.append(ch)  # rst levels are the order underline styles appear
                    heading = (line.strip(), rst_levels.index(ch) + 1)
                    i += 1
        if heading:
            out.append((heading[0], heading[1], []))
        else:
            out[-1][2].append(line)
        i += 1
    return [(h, lvl, "\n".join(body).strip()) for h, lvl, body in out]


def _split_long(body: str) -> list[str]:
    if len(body) <= MAX_SECTION_CHARS:
        return [body]
    parts, cur = [], ""
    for para in body.split("\n\n"):
        if cur and len(cur) + len(para) > MAX_SECTION_CHARS:
            parts.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        parts.append(cur)
    return parts


def curate_prose(relpath: str, text: str, max_units: int = 5_000) -> ParsedDocument:
    """A prose document with one `section` unit per heading (title = the heading path)."""
    if len(text.split()) < MIN_WORDS:
        raise Rejected("too_short", f"fewer than {MIN_WORDS} words")
    suffix = "." + relpath.rsplit(".", 1)[-1].lower() if "." in relpath else ".txt"
    units: list[Unit] = []
    trail: list[str] = []
    for heading, level, body in _sections(text, suffix):
        if level:
            trail = trail[: level - 1] + [heading]
        if len(body.split()) < MIN_WORDS:
            continue
        title = " > ".join(trail) or relpath.rsplit("/", 1)[-1]
        for k, chunk in enumerate(_split_long(body)):
            units.append(
                Unit("section", title, chunk, {"heading_level": level, "part": k, "headings": list(trail)})
            )
        if len(units) >= max_units:
            units = units[:max_units]
            break
    return ParsedDocument(
        format="prose",
        text=text,
        units=units,
        license=spdx_license(text),
        meta={"markup": suffix.lstrip("."), "sections": len(units)},
    )
