"""Production execution on Kubernetes, rendered offline.

No Kubernetes API server can run on this machine (no Docker engine, no kind/k3s), so these
tests render the Job a GPU step would get with dagster-k8s's own functions and check it; they
do not submit it anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent


def _render_step_job(asset_key: dg.AssetKey):
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    from ossa_assets.definitions import defs

    node = defs.resolve_asset_graph().get(asset_key)
    op_tags = node.assets_def.op.tags
    # the executor serialises the op tag as JSON before reading it back
    tags = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in op_tags.items()}
    user_config = get_user_defined_k8s_config(tags)
    return construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="ossa:latest", dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"],
        job_name="ossa-step-finetune",
        user_defined_k8s_config=user_config,
    )


def test_gpu_asset_renders_a_gpu_pod():
    job = _render_step_job(dg.AssetKey(["finetune", "domain_checkpoint"]))
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.resources.limits["nvidia.com/gpu"] == "8"
    assert container.resources.requests["nvidia.com/gpu"] == "8"
    assert container.resources.limits["memory"] == "400Gi"
    assert "nvidia.com/gpu.product" in pod.node_selector
    assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in pod.tolerations)


def test_cpu_asset_renders_no_gpu():
    job = _render_step_job(dg.AssetKey(["corpora", "curated_corpus"]))
    (container,) = job.spec.template.spec.containers
    limits = (container.resources.limits or {}) if container.resources else {}
    assert "nvidia.com/gpu" not in limits


def test_every_gpu_pool_asset_declares_a_pod_spec():
    from ossa_assets.definitions import defs

    for a in defs.assets:
        for key in a.keys:
            node = defs.resolve_asset_graph().get(key)
            if "gpu" in (node.pools or set()):
                assert "dagster-k8s/config" in a.op.tags, key.to_user_string()


def test_prod_environment_selects_the_k8s_executor_and_urls():
    """Switching to production is configuration only: the same definitions, other resources."""
    code = (
        "from ossa_assets.definitions import defs; "
        "import json; r = defs.resources; "
        "print(json.dumps({'executor': defs.executor.name, 'graph': r['graph'].backend, "
        "'qdrant_local': r['qdrant'].path}))"
    )
    env = {
        "OSSA_ENV": "prod",
        "OSSA_PROFILE": "prod",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"executor": "k8s", "graph": "bolt", "qdrant_local": None}
