"""The domain registry: every per-domain list in ossa derives from this one table.

A domain names its static partition, the route that serves it, the control token its prompts
start with (one tokenizer and one multi-task adapter serve all three), the curator that judges
its files (a `module:function` path, imported on first use so definitions load fast), and the
file name a generated text is judged under (the curators dispatch on suffix and path).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    name: str
    route: str
    token: str
    curator: str
    judge_name: str


REGISTRY: tuple[Domain, ...] = (
    Domain("api_spec", "/api-model/v1", "<|api_spec|>",
           "ossa_assets.lib.curation.openapi:curate_file", "generated/openapi.yaml"),
    Domain("industrial_protocol", "/protocol-model/v1", "<|industrial_protocol|>",
           "ossa_assets.lib.curation.opcua:curate_file", "generated/model.NodeSet2.xml"),
    Domain("devops_workflow", "/devops-model/v1", "<|devops_workflow|>",
           "ossa_assets.lib.curation.cicd:curate_file", ".gitlab-ci.yml"),
)

DOMAINS: tuple[str, ...] = tuple(d.name for d in REGISTRY)
# route -> domain name, in registry order
ROUTES: dict[str, str] = {d.route: d.name for d in REGISTRY}
_BY_NAME = {d.name: d for d in REGISTRY}


def domain(name: str) -> Domain:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown domain {name!r}: one of {', '.join(DOMAINS)}") from None
