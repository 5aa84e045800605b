"""ossa's inference runtime: the endpoints that serve what the `serving/deployment` asset declared.

Imports `ossa_assets.lib` (the deployment contract, the domain registry, engines) and never
Dagster: it runs in its own process or pod (`python -m ossa_serving`, `ossa serve`).
"""

from ossa_serving.app import create_app

__all__ = ["create_app"]
