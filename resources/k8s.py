"""Kubernetes execution: GPU pod specs declared once per asset, and the executor per environment.

Each GPU asset carries its pod spec as the `dagster-k8s/config` op tag; the k8s_job_executor
turns it into the step's Job. Locally the tag is inert and the multiprocess executor runs the
step, with the `gpu` pool keeping GPU-bound steps one at a time.
"""

from __future__ import annotations

from typing import Any

GPU_POOL = "gpu"

# Heavy modules every training/export step imports. The local executor forks steps from a
# server that has imported them once per run, instead of paying ~20 s of imports per step.
PRELOAD_MODULES = [
    "ossa_assets.definitions",
    "resources.warm",
    "torch",
    "transformers",
    "peft",
    "datasets",
    "mlflow",
    "sentence_transformers",
    "onnxruntime",
]


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
    return local_executor


def _local_executor_def():
    """Dagster's multi_or_in_process_executor with this project's multiprocess defaults.

    Multiprocess (2 at a time, steps forked from a server that preloaded torch & co) unless a
    run asks for `execution: {config: {in_process: {}}}` — what one-step runs such as an hourly
    backfill want: no step process, no forkserver start (~10 s less per run). Built from
    Dagster's own pieces (internal names, pinned with dagster) because `configured` would freeze
    the choice.
    """
    import dagster as dg
    from dagster._core.definitions.executor_definition import (
        IN_PROC_CONFIG,
        MULTI_PROC_CONFIG,
        _core_in_process_executor_creation,
        _core_multiprocess_executor_creation,
        _get_default_executor_requirements,
    )

    @dg.executor(
        name="ossa_local_executor",
        config_schema=dg.Field(
            dg.Selector({"multiprocess": MULTI_PROC_CONFIG, "in_process": IN_PROC_CONFIG}),
            default_value={"multiprocess": {
                "max_concurrent": 2,
                "start_method": {"forkserver": {"preload_modules": PRELOAD_MODULES}},
            }},
        ),
        requirements=_get_default_executor_requirements,
    )
    def ossa_local_executor(init_context):
        config = init_context.executor_config
        if "multiprocess" in config:
            return _core_multiprocess_executor_creation(config["multiprocess"])
        return _core_in_process_executor_creation(config["in_process"])

    return ossa_local_executor


local_executor = _local_executor_def()
IN_PROCESS_RUN_CONFIG = {"execution": {"config": {"in_process": {}}}}


def single_step_executor_for(env: str):
    """For jobs whose runs hold one step (one source's curation, one hour's adapter): locally the
    step runs in the run's own process, which saves a step process and a forkserver start (about
    8 s of the hourly refresh's latency); in production each step is still its own pod."""
    import dagster as dg

    if env == "prod":
        return executor_for(env)
    return dg.in_process_executor
