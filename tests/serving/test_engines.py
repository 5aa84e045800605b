"""The decoding engines without HTTP: KV-cached continuous batching gives exactly the tokens of
full recomputation (fp32), whatever joins or leaves the batch, and is faster per token."""

from __future__ import annotations

import time

import numpy as np
import pytest


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from ossa_assets.lib.onnx_runtime import KVCausalLM, OnnxCausalLM
    from ossa_serving.engines import GenerationEngine, KVGenerationEngine
    from tests.serving.deployment import build_deployment

    dep = build_deployment(tmp_path_factory.mktemp("engines"))
    from ossa_assets.lib.modeling import load_tokenizer

    tok = load_tokenizer(dep.engine)
    kw = {"max_batch": 8, "max_batch_tokens": 4096, "max_delay_ms": 2, "max_queue": 128}
    full = GenerationEngine("full", OnnxCausalLM(dep.engine / "model.onnx"), tok, **kw)
    kv = KVGenerationEngine("kv", KVCausalLM(dep.engine / "model_kv.onnx"), tok, **kw)
    yield full, kv, tok
    full.close()
    kv.close()


def test_kv_cached_continuous_batching_equals_full_recomputation(engines):
    from ossa_serving.engines import GenParams

    full, kv, tok = engines
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(5, len(tok), size=int(k))] for k in rng.integers(1, 30, size=30)]
    lengths = [int(n) for n in rng.integers(1, 14, size=30)]  # rows leave at different steps
    want = [full.submit(p, GenParams(n), 60).result().tokens for p, n in zip(prompts, lengths)]  # one at a time
    futs = []
    for i, (p, n) in enumerate(zip(prompts, lengths)):  # staggered: joins while others decode
        futs.append(kv.submit(p, GenParams(n), 60))
        time.sleep(0.003 * (i % 3))
    got = [f.result().tokens for f in futs]
    assert got == want
    seeded = GenParams(10, temperature=1.0, top_p=0.9, seed=3)
    assert kv.submit(prompts[0], seeded, 60).result().tokens == full.submit(prompts[0], seeded, 60).result().tokens


def test_kv_engine_refuses_a_model_without_a_cache(engines, tmp_path):
    from ossa_assets.lib.onnx_runtime import KVCausalLM

    full, _, _ = engines
    with pytest.raises(ValueError, match="not exported with a KV cache"):
        KVCausalLM(full.lm.path)
