"""Base model assembly and fine-tuning, without Dagster."""

from __future__ import annotations

import json

import pytest

from ossa_assets.lib import finetune, modeling
from ossa_assets.lib.training import TrainSettings, evaluate, pack_blocks

TEXTS = [
    f"openapi: 3.0.3\ninfo:\n  title: Service {i}\n  version: '{i}.0'\npaths:\n  /items/{{id}}:\n"
    f"    get:\n      summary: Get item {i}\n      responses:\n        '200':\n          description: ok\n"
    for i in range(60)
]
ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=128)


def test_tokenizer_covers_any_bytes_and_has_domain_tokens():
    tok = modeling.train_tokenizer(TEXTS, vocab_size=400, model_max_length=128)
    text = "ünïcødé ✓ \x07 binary-ish"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    for t in modeling.DOMAIN_TOKENS.values():
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1


def test_pretrained_path_takes_the_same_code_path(tmp_path):
    """A local HF checkpoint (as llama2-13b would be) loads through build_base/load_base."""
    tok = modeling.train_tokenizer(TEXTS, vocab_size=300, model_max_length=128)
    # a "pretrained" checkpoint without ossa's domain tokens, as a real one would be
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                    unk_token="<unk>")
    model = modeling.build_llama(plain, ARCH, seed=0)
    ckpt = tmp_path / "llama-local"
    model.save_pretrained(ckpt, safe_serialization=True)
    plain.save_pretrained(ckpt)

    base = tmp_path / "base"
    base.mkdir()
    info = finetune.build_base(base, [], pretrained_path=str(ckpt), vocab_size=0, arch={},
                               tokenizer_max_chars=0, seed=0)
    assert info["source"] == "pretrained" and info["weights_path"] == str(ckpt.resolve())
    assert not any(base.glob("*.safetensors")), "pretrained weights must not be copied"
    m, t = finetune.load_base(base)
    assert m.get_input_embeddings().weight.shape[0] >= len(t)
    assert all(tok_ in t.get_vocab() for tok_ in modeling.DOMAIN_TOKENS.values())
    assert t.pad_token is not None

    with pytest.raises(FileNotFoundError, match="config.json"):
        finetune.build_base(tmp_path / "x", [], pretrained_path=str(tmp_path), vocab_size=0, arch={},
                            tokenizer_max_chars=0, seed=0)


def test_finetune_lowers_validation_loss(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    finetune.build_base(base, TEXTS, pretrained_path=None, vocab_size=300, arch=ARCH,
                        tokenizer_max_chars=10**6, seed=0)
    out = tmp_path / "ck"
    tokenized = tmp_path / "tok"
    sizes = finetune.tokenize_corpus(base, {"train": TEXTS[:50], "validation": TEXTS[50:]}, "api_spec",
                                     tokenized, seq_len=64, max_eval_blocks=8)
    assert sizes["train"] > 8 and 0 < sizes["validation"] <= 8
    report = finetune.finetune_domain(
        base, tokenized, "api_spec", out,
        settings=TrainSettings(max_steps=30, batch_size=8, learning_rate=3e-3),
        work_dir=tmp_path / "work",
    )
    assert report.final_val["val_loss"] < report.initial_val["val_loss"] - 1.0
    assert len(report.step_losses) == 30 and report.step_losses[-1] < report.step_losses[0]
    # the saved checkpoint reproduces the reported loss
    model = modeling.load_causal_lm(out)
    tok = modeling.load_tokenizer(out)
    blocks = pack_blocks(tok, TEXTS[50:], 64, modeling.DOMAIN_TOKENS["api_spec"], max_blocks=8)
    assert evaluate(model, blocks, tok.pad_token_id).loss == pytest.approx(report.final_val["val_loss"], rel=1e-4)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


def test_pack_blocks_is_exact():
    tok = modeling.train_tokenizer(TEXTS, vocab_size=300, model_max_length=128)
    blocks = pack_blocks(tok, TEXTS[:5], 32, "<|api_spec|>")
    assert all(len(b) == 32 for b in blocks[:-1])
    flat = [i for b in blocks for i in b]
    assert flat[0] == tok.convert_tokens_to_ids("<|api_spec|>")
    assert flat.count(tok.eos_token_id) >= 4


def test_tokenize_refuses_an_empty_validation_split(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    finetune.build_base(base, TEXTS, pretrained_path=None, vocab_size=300, arch=ARCH,
                        tokenizer_max_chars=10**6, seed=0)
    with pytest.raises(ValueError, match="validation split yields no token blocks"):
        finetune.tokenize_corpus(base, {"train": TEXTS, "validation": []}, "api_spec", tmp_path / "t",
                                 seq_len=64, max_eval_blocks=8)
    assert not (tmp_path / "t").exists()
