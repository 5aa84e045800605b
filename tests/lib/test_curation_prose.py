"""Prose structure: heading paths follow the levels a document has, licence headers are metadata."""

from __future__ import annotations

import textwrap

import pytest

from ossa_assets.lib.curation.prose import curate_prose

BODY = "carries enough words in this section to be a unit of its own here"

# an AsciiDoc specification whose chapters are `==` (the top heading is not level 1), with a
# licence block before the first chapter, as the OPC Foundation's and many others' are written
ADOC = textwrap.dedent(f"""\
    ////
    Copyright 2024 Example Foundation. Licensed under the Apache License, Version 2.0 (the
    "License"); you may not use this file except in compliance with the License.
    SPDX-License-Identifier: Apache-2.0
    ////

    == Overview

    The overview {BODY}.

    === Messages

    Messages {BODY}.

    ==== Headers

    Headers {BODY}.

    === Security

    Security {BODY}.

    == Transport

    Transport {BODY}.
    """)

# Markdown that starts at `##` and skips a level
MD = textwrap.dedent(f"""\
    ## Install

    Install {BODY}.

    #### Linux

    Linux {BODY}.

    ## Usage

    Usage {BODY}.

    ### Flags

    Flags {BODY}.
    """)


@pytest.mark.parametrize("name, text, want", [
    ("spec/uadp.adoc", ADOC, ["Overview", "Overview > Messages", "Overview > Messages > Headers",
                              "Overview > Security", "Transport"]),
    ("docs/README.md", MD, ["Install", "Install > Linux", "Usage", "Usage > Flags"]),
])
def test_heading_paths_follow_the_levels_present(name, text, want):
    """The old `trail[:level - 1]` made Security a child of Messages and Transport a child of
    Overview whenever the top heading was not level 1."""
    doc = curate_prose(name, text)
    assert [u.title for u in doc.units] == want
    assert [u.meta["headings"] for u in doc.units][-1] == want[-1].split(" > ")


def test_a_licence_header_is_metadata_not_a_unit():
    doc = curate_prose("spec/uadp.adoc", ADOC)
    assert not any("Apache License" in u.text for u in doc.units)
    assert "Apache License, Version 2.0" in doc.meta["license_text"]
    assert doc.license == "Apache-2.0"


@pytest.mark.parametrize("text", [
    f"# Licensing\n\nThis project {BODY}; its code is licensed under the MIT licence, see LICENSE.\n\n"
    f"## Contributing\n\nContributions {BODY} and are reviewed by the maintainers.\n",
    f"# Warranty claims\n\nA warranty claim {BODY}, filed with the receipt and the serial number of "
    f"the device, then the device is sent to the service centre for repair or replacement.\n",
])
def test_sections_about_licences_or_warranties_stay_units(text):
    """Only a header made of licence boilerplate is dropped, not prose that mentions a licence."""
    doc = curate_prose("docs/README.md", text)
    assert doc.units and doc.units[0].title in ("Licensing", "Warranty claims")
    assert "license_text" not in doc.meta


def test_a_chapter_opening_with_its_licence_keeps_only_its_text():
    text = textwrap.dedent(f"""\
        == Encoding

        ////
        Copyright 2024 Example Foundation. SPDX-License-Identifier: Apache-2.0
        ////

        Encoding {BODY}.
        """)
    [unit] = curate_prose("spec/chapter.adoc", text).units
    assert unit.title == "Encoding" and unit.text == f"Encoding {BODY}."
