"""The three domains ossa adapts models to (static partitions of every per-domain stage)."""

DOMAINS = ("api_spec", "industrial_protocol", "devops_workflow")
