"""Corpus sources: which sources each domain reads, from a YAML file (no code per source)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

PACKAGE = Path(__file__).resolve().parent.parent / "ossa_assets"
DEFAULT_SOURCES = PACKAGE / "configs" / "sources.yaml"
SAMPLE_CORPUS = PACKAGE / "corpora" / "sample"


class CorpusSources(dg.ConfigurableResource):
    config_path: str = Field(default=str(DEFAULT_SOURCES), description="The sources YAML (OSSA_SOURCES).")
    corpus_root: Optional[str] = Field(
        default=None, description="${OSSA_CORPUS_ROOT} in the sources file; None = the shipped sample."
    )

    def specs(self):
        from ossa_assets.lib.curation.sources import load_sources
        from ossa_assets.lib.domains import DOMAINS

        root = Path(self.corpus_root or os.environ.get("OSSA_CORPUS_ROOT") or SAMPLE_CORPUS).resolve()
        env = {"OSSA_CORPUS_ROOT": str(root)}
        if root == SAMPLE_CORPUS:
            env["OSSA_CORPUS_LICENSE"] = "Apache-2.0"  # the sample is ossa's own (its README)
        return load_sources(self.config_path, DOMAINS, env=env)

    def specs_for(self, domain: str):
        return [s for s in self.specs() if s.domain == domain]

    def spec(self, name: str):
        for s in self.specs():
            if s.name == name:
                return s
        raise KeyError(f"no source named {name!r} in {self.config_path}")
