"""The fine-tuning entry point: one JSON spec in, one JSON report out.

    python -m ossa_assets.lib.train_job spec.json                       # one process
    torchrun --nproc_per_node 8 -m ossa_assets.lib.train_job spec.json  # DDP / FSDP

The asset calls `run` in its own process when one process is configured, and launches this
module under torchrun otherwise; on Kubernetes that torchrun command is what the GPU pod runs.
Every rank trains; rank 0 evaluates, writes the model to `out_dir` and the report to
`report_path` (atomically). The spec's `checkpoint_dir` outlives a killed attempt: the next
attempt with the same spec resumes from its newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ossa_assets.lib.training import TrainSettings


@dataclass
class TrainJobSpec:
    base_dir: str
    tokenized_dir: str
    domain: str
    out_dir: str
    work_dir: str
    checkpoint_dir: str
    report_path: str
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainJobSpec":
        return cls(**json.loads(Path(path).read_text()))


def run(spec: TrainJobSpec, log_metrics=None):
    """Train per the spec in this process (one rank of several under torchrun)."""
    from ossa_assets.lib.artifacts import atomic_write_text
    from ossa_assets.lib.finetune import finetune_domain

    settings = TrainSettings(**spec.settings)
    report = finetune_domain(
        Path(spec.base_dir),
        Path(spec.tokenized_dir),
        spec.domain,
        Path(spec.out_dir),
        settings=settings,
        work_dir=Path(spec.work_dir),
        checkpoint_dir=Path(spec.checkpoint_dir),
        log_metrics=log_metrics,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_text(Path(spec.report_path), json.dumps(asdict(report), indent=2))
    return report


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (PR_SET_PDEATHSIG).

    torchrun starts its workers in sessions of their own, so killing a step (or torchrun) would
    leave ranks training on, writing checkpoints into the directory the next attempt resumes
    from. With this in torchrun (set before its exec) and in every worker, a killed step takes
    the whole tree with it.
    """
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to arm
        return
    if os.getppid() == 1:  # the parent died before the signal was armed
        os._exit(1)


# exec torchrun with the parent-death signal armed (it survives exec, unlike preexec_fn's fork
# hazards in a threaded step process)
_EXEC_DYING_WITH_PARENT = (
    "import os, sys; from ossa_assets.lib.train_job import die_with_parent; die_with_parent(); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def torchrun_command(spec_path: Path, nproc: int) -> list[str]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return [sys.executable, "-c", _EXEC_DYING_WITH_PARENT, torchrun, "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ossa_assets.lib.train_job", str(spec_path)]


def launch(spec: TrainJobSpec, spec_path: Path, nproc: int, log_path: Path | None = None) -> dict[str, Any]:
    """Run the spec under torchrun with `nproc` processes; return rank 0's report.

    The children's output goes to `log_path` (streamed into the step's log by the caller), and
    a non-zero exit raises with its tail: the step fails with the trainer's own error.
    """
    spec.save(spec_path)
    cmd = torchrun_command(spec_path, nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        if log_path:
            out.close()
    if proc.returncode != 0:
        tail = Path(log_path).read_text()[-3000:] if log_path else ""
        raise RuntimeError(f"torchrun exited {proc.returncode}: {' '.join(cmd[3:])}\n{tail}")
    return json.loads(Path(spec.report_path).read_text())


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m ossa_assets.lib.train_job SPEC.json", file=sys.stderr)
        return 2
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: never outlive the launcher
        die_with_parent()
    run(TrainJobSpec.load(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
