"""Fine-tune orchestration overhead and CPU tokens/s, in one run.

  bare   the training loop alone (lib.training.train: HF Trainer on the same token blocks,
         same steps, same settings), in this process
  asset  `finetune/domain_checkpoint` materialized in-process with Dagster (dg.materialize):
         config, IO manager, MLflow run + metrics + registration, checkpointing every
         save_steps, evaluation before/after, format-validity sampling, atomic publish, checks

  library  the asset's work without Dagster or MLflow (same train_job with its evaluation and
         checkpoints, same format-validity sampling): asset/library is the orchestration overhead

All on one domain of the sample corpus with the active profile's model. Prints medians over
--repeat runs and the ratio asset/loop with its verdict (target <= 1.05) for each --steps: the
target is the orchestration's promise, so it is judged at every step count measured, the tiny
ones too (where fixed costs per run weigh most).

  python bench/bench_finetune.py [--domain devops_workflow] [--steps 80 200] [--repeat 3]

Each target is printed as `TARGET <what>: <target>; measured <x> -> MET | MISSED` (bench/verdict.py);
the bench exits 1 if any target is MISSED.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def prepare(work: Path, domain: str):
    """Curate the sample, build the base, tokenize one domain: the inputs both sides share."""
    import dagster as dg

    from ossa_assets.corpora.assets import curated_corpus
    from ossa_assets.finetune.assets import base_model, tokenized_corpus
    from tests.conftest import SAMPLE, curate_all, tiny_resources

    corpus = work / "corpus"
    shutil.copytree(SAMPLE, corpus)
    resources = tiny_resources(work / "data", corpus)
    instance = dg.DagsterInstance.ephemeral()
    curate_all(instance, resources)
    assert dg.materialize([base_model, curated_corpus.to_source_asset()], selection=[base_model],
                          resources=resources, instance=instance).success
    assert dg.materialize([tokenized_corpus, base_model.to_source_asset(), curated_corpus.to_source_asset()],
                          selection=[tokenized_corpus], partition_key=domain, resources=resources,
                          instance=instance).success
    return resources, instance


def bare_once(resources, domain: str, steps: int, work: Path) -> tuple[float, float]:
    from ossa_assets.finetune.config import FinetuneConfig
    from ossa_assets.keys import BASE_MODEL, TOKENIZED_CORPUS
    from ossa_assets.lib import modeling
    from ossa_assets.lib.finetune import load_base, load_blocks
    from ossa_assets.lib.training import TrainSettings, train

    store = resources["store"]
    base = store.load_manifest(BASE_MODEL, None)
    tok = store.load_manifest(TOKENIZED_CORPUS, domain)
    settings = TrainSettings.from_config(FinetuneConfig())
    settings.max_steps = steps
    settings.save_steps = 0
    model, tokenizer = load_base(base.path)
    model.to(modeling.best_device())
    blocks = load_blocks(tok.path, "train")
    t = time.perf_counter()
    result = train(model, blocks, tokenizer.pad_token_id, settings, str(work))
    seconds = time.perf_counter() - t
    return seconds, result.tokens_seen / result.train_seconds


def library_once(resources, domain: str, steps: int, work: Path) -> float:
    """The asset's work without Dagster or MLflow: the same train_job (evaluation before/after,
    checkpoints every save_steps, save) plus the same format-validity sampling."""
    import shutil

    from ossa_assets.finetune.config import FinetuneConfig
    from ossa_assets.keys import BASE_MODEL, TOKENIZED_CORPUS
    from ossa_assets.lib import modeling, train_job
    from ossa_assets.lib.evaluation import format_validity
    from ossa_assets.lib.training import TrainSettings

    store = resources["store"]
    config = FinetuneConfig()
    settings = TrainSettings.from_config(config)
    settings.max_steps = steps
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = train_job.TrainJobSpec(
        base_dir=store.load_manifest(BASE_MODEL, None).path,
        tokenized_dir=store.load_manifest(TOKENIZED_CORPUS, domain).path, domain=domain,
        out_dir=str(work / "model"), work_dir=str(work / "trainer"), checkpoint_dir=str(work / "ckpt"),
        report_path=str(work / "report.json"), settings=settings.to_dict())
    t = time.perf_counter()
    train_job.run(spec)
    model = modeling.load_causal_lm(work / "model")
    format_validity(model, modeling.load_tokenizer(work / "model"), domain, samples=config.generation_samples,
                    max_new_tokens=config.max_new_tokens, seed=config.seed)
    return time.perf_counter() - t


def asset_once(resources, instance, domain: str, steps: int) -> tuple[float, float]:
    import dagster as dg

    from ossa_assets.finetune.assets import base_model, domain_checkpoint, tokenized_corpus

    t = time.perf_counter()
    res = dg.materialize(
        [domain_checkpoint, base_model.to_source_asset(), tokenized_corpus.to_source_asset()],
        selection=[domain_checkpoint], partition_key=domain, resources=resources, instance=instance,
        run_config={"ops": {"finetune__domain_checkpoint": {"config": {"max_steps": steps}}}},
        raise_on_error=False,
    )
    seconds = time.perf_counter() - t
    mat = res.asset_materializations_for_node("finetune__domain_checkpoint")[0]
    return seconds, mat.metadata["tokens_per_second"].value


def main() -> int:
    from verdict import Verdicts

    verdicts = Verdicts()
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain", default="devops_workflow")
    ap.add_argument("--steps", type=int, nargs="+", default=[80, 200])  # the tiny profile, and longer
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ossa-bench-ft-"))
    os.environ["OSSA_DATA_ROOT"] = str(work / "data")
    ratios: list[tuple[int, float]] = []
    try:
        resources, instance = prepare(work, args.domain)
        bare_once(resources, args.domain, 5, work / "warm")  # warm caches (first-call kernels)
        print(f"domain {args.domain}, median of {args.repeat}")
        print("loop: the bare training loop; library: the asset's work without Dagster/MLflow")
        print(f"{'steps':>6} {'loop s':>8} {'library s':>10} {'asset s':>8} {'asset/loop':>11} "
              f"{'asset/library':>14} {'loop tok/s':>11} {'asset tok/s':>12}")
        for steps in args.steps:
            b, lib_, a = [], [], []
            for _ in range(args.repeat):
                b.append(bare_once(resources, args.domain, steps, work / "bare"))
                lib_.append(library_once(resources, args.domain, steps, work / "library"))
                a.append(asset_once(resources, instance, args.domain, steps))
            bs = statistics.median(x[0] for x in b)
            ls = statistics.median(lib_)
            as_ = statistics.median(x[0] for x in a)
            print(f"{steps:>6} {bs:>8.2f} {ls:>10.2f} {as_:>8.2f} {as_ / bs:>11.2f} {as_ / ls:>14.2f} "
                  f"{statistics.median(x[1] for x in b):>11.0f} {statistics.median(x[1] for x in a):>12.0f}")
            ratios.append((steps, as_ / bs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for steps, ratio in ratios:
        verdicts.at_most(f"asset / bare training loop at {steps} steps (median of {args.repeat})", ratio, 1.05)
    return verdicts.report()


if __name__ == "__main__":
    sys.exit(main())
