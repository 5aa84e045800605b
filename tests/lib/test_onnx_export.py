"""ossa_assets.lib.onnx_export on a real, briefly trained tiny Llama: merge → export → int8.

A random-init model has near-uniform logits, so argmax ties flip under any perturbation and an
agreement number would mean nothing; the fixture trains the model on the OpenAPI corpus first.
Everything expensive is session-scoped: one tokenizer, one training run, one export.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pytest

from ossa_assets.lib.onnx_export import export_onnx, merge_adapter, quantize_int8
from ossa_assets.lib.onnx_runtime import OnnxCausalLM, top1_agreement, usable_providers

torch = pytest.importorskip("torch")

# real OpenAPI documents; on a machine without ../shared, the sample the project ships
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "openapi"
if not CORPUS.is_dir():
    CORPUS = Path(__file__).resolve().parents[2] / "ossa_assets" / "corpora" / "sample" / "openapi"
TRAIN_CHARS = 600_000  # enough text for 150 steps of 8×64 tokens without repeating much
SEQ = 64


@contextlib.contextmanager
def _one_torch_thread():
    # The tiny model trains as fast on one thread, and with the cores busy (other test
    # jobs) two spinning OpenMP threads made a step 15× slower (1 s instead of 70 ms).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _split_corpus() -> tuple[list[str], list[str]]:
    """Train/held-out split by a hash of the file path, so held-out files are never trained on."""
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml", ".md"))
    train, held = [], []
    for p in files:
        digest = hashlib.sha1(str(p.relative_to(CORPUS)).encode()).hexdigest()
        (held if int(digest, 16) % 10 == 0 else train).append(p)
    return train, held


def _read(paths: list[Path], limit: int) -> list[str]:
    out, n = [], 0
    for p in paths:
        if n >= limit:
            break
        text = p.read_text(errors="ignore")
        out.append(text)
        n += len(text)
    return out


@pytest.fixture(scope="session")
def corpus() -> dict[str, list[str]]:
    train, held = _split_corpus()
    return {"train": _read(train, TRAIN_CHARS), "held": _read(held, 60_000)}


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, corpus) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus["train"],
        trainers.BpeTrainer(
            vocab_size=2000,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    ids: list[int] = []
    for doc in fast(corpus["train"])["input_ids"]:
        ids.extend(doc + [fast.eos_token_id])
    data = torch.tensor(ids)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    with _one_torch_thread():
        for _ in range(150):
            starts = torch.randint(0, len(data) - SEQ, (8,), generator=gen)
            x = torch.stack([data[s : s + SEQ] for s in starts])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    # Trained enough that the argmax is meaningful (random init sits at ln(2000) ≈ 7.6).
    assert loss.item() < 5.0

    out = tmp_path_factory.mktemp("base")
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(base_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(base_dir)


@pytest.fixture(scope="session")
def held_tokens(corpus, tokenizer) -> list[list[int]]:
    """Held-out sequences of varying lengths (so batched evaluation has to pad)."""
    ids: list[int] = []
    for doc in tokenizer(corpus["held"])["input_ids"]:
        ids.extend(doc + [tokenizer.eos_token_id])
    seqs, pos = [], 0
    for i in range(24):
        n = 48 + (i * 37) % 81  # 48..128 tokens
        seqs.append(ids[pos : pos + n])
        pos += n
    assert all(len(s) >= 48 for s in seqs)
    return seqs


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, base_dir, corpus, tokenizer) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=64,
            lora_alpha=128,
            lora_dropout=0.1,
            target_modules=["q_proj", "v_proj", "gate_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    ids = tokenizer(corpus["train"][-1])["input_ids"][: 4 * SEQ]
    x = torch.tensor(ids).view(4, SEQ)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model.train()
    with _one_torch_thread():
        for _ in range(5):  # enough to move lora_B off zero, so merging has something to merge
            loss = peft_model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def merged_dir(tmp_path_factory, base_dir, adapter_dir) -> Path:
    return merge_adapter(base_dir, adapter_dir, tmp_path_factory.mktemp("merged") / "model")


@pytest.fixture(scope="session")
def fp32_onnx(tmp_path_factory, merged_dir) -> dict:
    return export_onnx(merged_dir, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="session")
def int8_onnx(fp32_onnx) -> dict:
    fp32 = Path(fp32_onnx["path"])
    return quantize_int8(fp32, fp32.with_name("model.int8.onnx"))


def _torch_fp32(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, dtype=torch.float32
    ).eval()


def _torch_logits(model_dir: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    model = _torch_fp32(model_dir)
    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return out.logits.numpy()


# --------------------------------------------------------------------------- merge


def test_merged_model_equals_base_plus_adapter(base_dir, adapter_dir, merged_dir, held_tokens):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    assert (merged_dir / "tokenizer.json").is_file()
    with safe_open(merged_dir / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]

    x = torch.tensor([held_tokens[0][:48], held_tokens[1][:48]])
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).eval()
    with torch.inference_mode():
        base_logits = base(input_ids=x).logits
        with_adapter = PeftModel.from_pretrained(base, adapter_dir).eval()(input_ids=x).logits
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, local_files_only=True).eval()
    with torch.inference_mode():
        merged_logits = merged(input_ids=x).logits

    # The adapter must matter, or equality with the base would prove nothing.
    assert (with_adapter - base_logits).abs().max() > 1e-3
    torch.testing.assert_close(merged_logits, with_adapter, atol=1e-4, rtol=1e-4)


def test_merge_replaces_an_existing_output_whole(tmp_path, base_dir, adapter_dir, merged_dir):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"from an older run")
    assert merge_adapter(base_dir, adapter_dir, out) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in merged_dir.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temp or old copies left


def test_merge_refuses_missing_adapter_and_writes_nothing(tmp_path, base_dir):
    out = tmp_path / "merged"
    with pytest.raises(FileNotFoundError):
        merge_adapter(base_dir, tmp_path / "no-adapter", out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- export


def test_export_info_and_dynamic_axes(fp32_onnx):
    import onnx

    path = Path(fp32_onnx["path"])
    assert fp32_onnx["inputs"] == ["input_ids", "attention_mask"]
    assert fp32_onnx["outputs"] == ["logits"]
    assert fp32_onnx["opset"] >= 18 and fp32_onnx["external_data"] is False
    assert fp32_onnx["bytes"] == path.stat().st_size
    assert not path.with_name(path.name + ".data").exists()
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp left

    graph = onnx.load(str(path)).graph
    for inp in graph.input:
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"]
    out_dims = graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in out_dims[:2]] == ["batch", "sequence"]
    assert out_dims[2].dim_value == 2000


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq", [7, 61])
def test_fp32_onnx_logits_match_torch(merged_dir, fp32_onnx, held_tokens, batch, seq):
    flat = [t for s in held_tokens for t in s]
    ids = np.array([flat[r * seq : (r + 1) * seq] for r in range(batch)], dtype=np.int64)
    mask = np.ones_like(ids)
    if batch > 1:
        mask[1, seq // 2 :] = 0  # right padding: the real positions must be unaffected
    expected = _torch_logits(merged_dir, ids, mask)
    got = OnnxCausalLM(fp32_onnx["path"]).logits(ids, mask)
    assert got.shape == (batch, seq, 2000)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], atol=1e-4, rtol=1e-4)


def test_left_padding_gives_unpadded_logits(fp32_onnx, held_tokens):
    lm = OnnxCausalLM(fp32_onnx["path"])
    short = held_tokens[0][:20]
    alone = lm.logits([short])[0]
    ids = np.array([[0] * 10 + short, held_tokens[1][:30]], dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, :10] = 0
    np.testing.assert_allclose(lm.logits(ids, mask)[0, 10:], alone, atol=1e-4)
    # A single token, the first step of generation from a one-token prompt, is a valid shape.
    np.testing.assert_allclose(lm.logits([short[:1]])[0], alone[:1], atol=1e-4)


def test_external_data_layout_for_large_models(merged_dir, fp32_onnx, int8_onnx, tmp_path):
    """The >2 GiB layout (all of 13b) forced on the tiny model: .onnx + one .data beside it."""
    out = tmp_path / "ext" / "model.onnx"
    info = export_onnx(merged_dir, out, external_data=True)
    data = out.with_name("model.onnx.data")
    assert info["external_data"] and data.is_file() and out.stat().st_size < data.stat().st_size
    assert info["bytes"] == out.stat().st_size + data.stat().st_size
    ids = np.array([[5, 9, 300, 42, 17]], dtype=np.int64)
    np.testing.assert_allclose(
        OnnxCausalLM(out).logits(ids), OnnxCausalLM(fp32_onnx["path"]).logits(ids), atol=1e-5
    )

    q = out.with_name("model.int8.onnx")
    qinfo = quantize_int8(out, q, external_data=True)
    assert qinfo["options"]["external_data"] and q.with_name("model.int8.onnx.data").is_file()
    np.testing.assert_allclose(
        OnnxCausalLM(q).logits(ids), OnnxCausalLM(int8_onnx["path"]).logits(ids), atol=1e-5
    )
    # Re-quantizing as one file to the same path must not leave the old .data behind.
    qinfo = quantize_int8(out, q, external_data=False)
    assert not q.with_name("model.int8.onnx.data").exists()
    assert qinfo["int8_bytes"] == q.stat().st_size


def test_failed_export_leaves_no_file(tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(FileNotFoundError):
        export_onnx(tmp_path / "does-not-exist", out)
    assert list(tmp_path.iterdir()) == []


def test_failed_quantization_keeps_old_file_and_no_temp(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    out = tmp_path / "model.int8.onnx"
    out.write_bytes(b"previous version")
    with pytest.raises(Exception):
        quantize_int8(broken, out)
    assert out.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx", "model.int8.onnx"]


# --------------------------------------------------------------------------- int8


def test_int8_smaller_and_agrees_on_held_out_text(merged_dir, int8_onnx, held_tokens):
    assert int8_onnx["int8_bytes"] < int8_onnx["fp32_bytes"]
    assert int8_onnx["ratio"] < 0.4  # the embedding and lm_head are int8 too
    assert int8_onnx["options"]["per_channel"] is True

    result = top1_agreement(merged_dir, int8_onnx["path"], held_tokens)
    assert result["positions"] == sum(len(s) for s in held_tokens)
    # The platform's blocking check.
    assert result["agreement"] >= 0.95, result


def test_fp32_onnx_agrees_with_torch_everywhere(merged_dir, fp32_onnx, held_tokens):
    result = top1_agreement(merged_dir, fp32_onnx["path"], held_tokens)
    assert result["agreement"] >= 0.999 and result["max_abs_logit_diff"] < 1e-3, result


def test_exclude_modules_keeps_lm_head_fp32(fp32_onnx, tmp_path):
    info = quantize_int8(fp32_onnx["path"], tmp_path / "q.onnx", exclude_modules=["lm_head"])
    assert len(info["options"]["excluded_nodes"]) == 1
    # lm_head is 128×2000 fp32 weights: keeping it adds ~0.75 MB over the default.
    assert info["int8_bytes"] > Path(fp32_onnx["path"]).stat().st_size * 0.45
    with pytest.raises(ValueError):
        quantize_int8(fp32_onnx["path"], tmp_path / "q2.onnx", exclude_modules=["no_such_module"])
    assert not (tmp_path / "q2.onnx").exists()


# --------------------------------------------------------------------------- runtime


def test_greedy_generate_matches_torch(merged_dir, fp32_onnx, held_tokens, tokenizer):
    prompt = held_tokens[2][:24]
    model = _torch_fp32(merged_dir)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    expected = out[0, len(prompt) :].tolist()
    got = OnnxCausalLM(fp32_onnx["path"]).generate(prompt, 24, eos_token_id=tokenizer.eos_token_id)
    assert got == expected


def test_generate_left_truncates_to_max_positions(fp32_onnx, held_tokens):
    lm = OnnxCausalLM(fp32_onnx["path"])
    assert lm.max_positions == 256
    long_prompt = [t for s in held_tokens for t in s][:300]
    got = lm.generate(long_prompt, 3)
    assert len(got) == 3
    assert got[0] == int(lm.logits([long_prompt[-256:]])[0, -1].argmax())


def test_unavailable_providers_are_not_claimed(fp32_onnx):
    import onnxruntime as ort

    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    lm = OnnxCausalLM(fp32_onnx["path"], providers=wanted)
    available = set(ort.get_available_providers())
    assert set(lm.providers) <= available
    assert usable_providers(wanted) == [p for p in wanted if p in available]
    # (name, options) pairs pass through as InferenceSession takes them; CPU is always last.
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    expected = [cuda] if cuda[0] in available else []
    assert usable_providers([cuda]) == expected + ["CPUExecutionProvider"]


def _cuda_ort() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(
    not _cuda_ort(), reason="needs a CUDA device and onnxruntime-gpu (CUDAExecutionProvider)"
)
def test_cuda_provider_matches_cpu(fp32_onnx, held_tokens):
    ids = np.array([s[:48] for s in held_tokens[:3]], dtype=np.int64)
    gpu = OnnxCausalLM(fp32_onnx["path"], providers=["CUDAExecutionProvider"])
    assert gpu.providers[0] == "CUDAExecutionProvider"
    cpu = OnnxCausalLM(fp32_onnx["path"])
    np.testing.assert_allclose(gpu.logits(ids), cpu.logits(ids), atol=1e-3)


def test_kv_cache_export_decodes_exactly_like_the_full_graph(merged_dir, fp32_onnx, held_tokens, tmp_path):
    """Greedy decoding through the KV-cache graph (left-padded batch, one token per call) gives
    the full graph's tokens; the cache's shape comes from the model's metadata."""
    from ossa_assets.lib.onnx_export import export_onnx_kv
    from ossa_assets.lib.onnx_runtime import KVCausalLM, OnnxCausalLM

    info = export_onnx_kv(merged_dir, tmp_path / "model_kv.onnx")
    kv = KVCausalLM(info["path"])
    full = OnnxCausalLM(fp32_onnx["path"])
    assert (kv.layers, kv.kv_heads, kv.head_dim) == (info["layers"], info["kv_heads"], info["head_dim"])
    prompts = [held_tokens[0][:5], held_tokens[1][:11], held_tokens[2][:2]]
    want = [full.generate(p, 10) for p in prompts]
    logits, cache, mask = kv.prefill(prompts)
    got = [[int(t)] for t in logits.argmax(-1)]
    for _ in range(9):
        logits, cache, mask = kv.decode([g[-1] for g in got], cache, mask)
        for g, t in zip(got, logits.argmax(-1)):
            g.append(int(t))
    assert got == want
    assert cache[0].shape == (3, kv.kv_heads, 11 + 9, kv.head_dim)
