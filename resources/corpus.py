"""Corpus sources: where each domain's raw documents are read from."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

# The shipped sample and ../shared/corpora share this layout, so one root switches both.
DEFAULT_DOMAIN_DIRS = {
    "api_spec": "openapi",
    "industrial_protocol": "opcua",
    "devops_workflow": "cicd",
}


class CorpusSources(dg.ConfigurableResource):
    root: str = Field(description="Directory holding one sub-directory per domain.")
    domain_dirs: dict[str, str] = Field(
        default=DEFAULT_DOMAIN_DIRS, description="Domain -> sub-directory of root."
    )

    def sources_for(self, domain: str) -> dict[str, Path]:
        """Source name -> directory for one domain (one source per domain for now)."""
        if domain not in self.domain_dirs:
            raise ValueError(f"no corpus directory configured for domain {domain!r}")
        path = Path(self.root) / self.domain_dirs[domain]
        return {f"{Path(self.root).name}/{self.domain_dirs[domain]}": path}
