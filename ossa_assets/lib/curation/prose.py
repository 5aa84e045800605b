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


# a licence or copyright header, however it is commented out
_LICENSE_LINE = re.compile(
    r"copyright|\(c\) \d{4}|©|spdx-license-identifier|licensed under the|permission is hereby granted|"
    r"all rights reserved|you may not use this file|distributed on an \"?as is|without warranties or conditions|"
    r"apache\.org/licenses|www\.gnu\.org/licenses|obtain a copy of the license",
    re.I)
_COMMENT_MARKS = re.compile(r"^\s*(?:////+|//|<!--|-->|\.\.|#|\*|/\*+|\*/)\s?|\s*(?:-->|\*/)\s*$")
_LEADING_COMMENT = re.compile(r"\s*(////+\n.*?\n////+|<!--.*?-->)[ \t]*(\n|$)", re.S)
_COMMENT_BLOCK = re.compile(r"^\s*(////+.*////+|<!--.*-->|/\*.*\*/)\s*$", re.S)


def _is_license_block(body: str, level: int) -> bool:
    """A section body that is only a licence/copyright header (kept in the document's metadata,
    not a unit): a commented-out block, or the text before the first heading, most of whose
    lines are licence boilerplate. Prose that mentions a licence is a unit like any other."""
    if level and not _COMMENT_BLOCK.match(body):
        return False
    lines = [_COMMENT_MARKS.sub("", ln).strip() for ln in body.split("\n")]
    lines = [ln for ln in lines if ln and not set(ln) <= set("/-=*#<>!.")]
    if not lines:
        return False
    hits = sum(bool(_LICENSE_LINE.search(ln)) for ln in lines)
    return hits >= 1 and hits / len(lines) >= 0.3 and len(" ".join(lines).split()) <= 400


def curate_prose(relpath: str, text: str, max_units: int = 5_000) -> ParsedDocument:
    """A prose document with one `section` unit per heading (title = the heading path)."""
    if len(text.split()) < MIN_WORDS:
        raise Rejected("too_short", f"fewer than {MIN_WORDS} words")
    suffix = "." + relpath.rsplit(".", 1)[-1].lower() if "." in relpath else ".txt"
    units: list[Unit] = []
    # the open headings as (level, title): a heading closes every open one at its level or
    # deeper, so the path follows the levels present (a document may start at `==` or `##`, and
    # skip levels), not level - 1 slots
    open_headings: list[tuple[int, str]] = []
    license_text: str | None = None
    for heading, level, body in _sections(text, suffix):
        if level:
            while open_headings and open_headings[-1][0] >= level:
                open_headings.pop()
            open_headings.append((level, heading))
        trail = [h for _, h in open_headings]
        lead = _LEADING_COMMENT.match(body)
        if lead and _is_license_block(lead.group(0), 1):  # a chapter opening with its licence
            license_text = license_text or lead.group(0).strip()[:2000]
            body = body[lead.end():].strip()
        if len(body.split()) < MIN_WORDS:
            continue
        if _is_license_block(body, level):
            license_text = license_text or body[:2000]
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
        meta={"markup": suffix.lstrip("."), "sections": len(units),
              **({"license_text": license_text} if license_text else {})},
    )
