"""Kubernetes execution: GPU pod specs declared once per asset, and the executor per environment.

Each GPU asset carries its pod spec as the `dagster-k8s/config` op tag; the k8s_job_executor
turns it into the step's Job. Locally the tag is inert and the multiprocess executor runs the
step, with the `gpu` pool keeping GPU-bound steps one at a time.
"""

from __future__ import annotations

from typing import Any

GPU_POOL = "gpu"

def gpu_pod_tags(
    gpus: int = 1,
    cpu: str = "8",
    memory: str = "64Gi",
    node_selector: dict[str, str] | None = None,
    gpu_product: str = "NVIDIA-H100-80GB-HBM3",
) -> dict[str, Any]:
    """The `dagster-k8s/config` tag for a step that needs `gpus` NVIDIA GPUs."""
    selector = {"nvidia.com/gpu.product": gpu_product, **(node_selector or {})}
    resources = {
        "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(gpus)},
        "limits": {"memory": memory, "nvidia.com/gpu": str(gpus)},
    }
    return {
        "dagster-k8s/config": {
            "container_config": {"resources": resources},
            "pod_spec_config": {
                "node_selector": selector,
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
        }
    }


def executor_for(env: str):
    if env == "prod":
        from dagster_k8s import k8s_job_executor

        # each step is its own pod; GPU steps get the pod spec from their op tags
        return k8s_job_executor.configured({"max_concurrent": 16})
    from resources.local_executor import local_executor

    return local_executor


def single_step_executor_for(env: str):
    """For jobs whose runs hold one step (one source's curation, one hour's adapter): locally the
    step runs in the run's own process, which saves a step process and a forkserver start (about
    8 s of the hourly refresh's latency); in production each step is still its own pod."""
    if env == "prod":
        return executor_for(env)
    from resources.local_executor import in_process_executor

    return in_process_executor
