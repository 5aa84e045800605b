"""A sentence-transformers model as an ONNX graph (fp32, and int8 where it stays faithful).

sentence-transformers' own ONNX backend (`backend="onnx"`, `export_dynamic_quantized_onnx_model`)
goes through optimum, whose ONNX package requires transformers < 4.58; this project runs
transformers 5. So the whole model (transformer, pooling, projection, normalisation) is
exported with the dynamo exporter, as the decoders are (NOTES.md: dynamo=False fails), and
quantized with onnxruntime's dynamic int8 per channel. The int8 graph is kept only when its
embeddings stay at cosine >= MIN_COSINE to fp32's on held-out texts (per-tensor int8 measured
0.963 on MiniLM: NOTES.md); the choice and the measured cosine are recorded in meta.json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

MIN_COSINE = 0.99
META = "meta.json"

# held-out texts for the int8 check when the caller has none: short and long, prose, code,
# identifiers, XML, YAML — the kinds of text the three domains embed
DEFAULT_HELD_OUT = [
    "list the pets of an owner", "GET /v2/store/inventory returns a map of status codes to quantities",
    "openapi: 3.0.0\ninfo:\n  title: Swagger Petstore\n  version: 1.0.0", "run the unit tests on merge requests",
    "<UAObject NodeId=\"ns=1;i=5001\" BrowseName=\"1:DeviceSet\"><DisplayName>DeviceSet</DisplayName></UAObject>",
    "stages: [build, test, deploy]\nbuild:\n  script:\n    - make", "PubSub UADP NetworkMessage with a DataSetWriterId",
    "How do I rotate the API key of a service account?", "deploy to production only from the default branch",
    "ReadValueId AttributeId Value IndexRange", "x", "a much longer description of an endpoint that accepts a JSON "
    "body with nested objects, validates every field against the schema and answers 422 with the invalid fields",
    "jobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4",
    "MethodDeclarationId ns=0;i=11492 GetMonitoredItems", "DELETE /users/{id} removes the user and their sessions",
    "cache: key: $CI_COMMIT_REF_SLUG paths: [node_modules/]",
]


class _Forward:
    """(input_ids, attention_mask) -> sentence_embedding, as a torch module for the exporter."""

    def __new__(cls, model):
        import torch

        class Forward(torch.nn.Module):
            def __init__(self, st):
                super().__init__()
                self.st = st

            def forward(self, input_ids, attention_mask):
                return self.st({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

        return Forward(model)


def _tokenizer(model_path: str | os.PathLike, max_seq_length: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    tok.enable_truncation(max_seq_length)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return tok


def export_embedder(model_path: str | os.PathLike, out_dir: str | os.PathLike, max_seq_length: int,
                    held_out: Sequence[str] | None = None) -> dict[str, Any]:
    """Export into out_dir (written to a temporary sibling, then renamed: a failed export
    leaves nothing). Returns the meta: the files, which one to serve, the int8 cosine."""
    import numpy as np
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ossa_assets.lib.embeddings import load_embedder

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model = load_embedder(str(model_path), max_seq_length, device="cpu").eval()
        tok = _tokenizer(model_path, max_seq_length)
        enc = tok.encode_batch(["export the embedding model", "a second, longer sentence to trace with"])
        ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=max(max_seq_length, 8))
        with torch.no_grad():
            program = torch.onnx.export(_Forward(model).eval(), (ids, mask), dynamo=True,
                                        input_names=["input_ids", "attention_mask"],
                                        output_names=["sentence_embedding"],
                                        dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                        "attention_mask": {0: batch, 1: seq}})
        program.save(str(tmp / "model.onnx"), external_data=False)
        quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8)
        shutil.copy(Path(model_path) / "tokenizer.json", tmp / "tokenizer.json")
        texts = list(held_out or DEFAULT_HELD_OUT)
        ref = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        fp32 = OnnxEmbedder(tmp, max_seq_length, file="model.onnx").encode(texts)
        int8 = OnnxEmbedder(tmp, max_seq_length, file="model.int8.onnx").encode(texts)
        cos_fp32 = float(np.min(np.sum(ref * fp32, axis=1)))
        cos_int8 = float(np.min(np.sum(fp32 * int8, axis=1)))
        if cos_fp32 < 0.9999:  # the export itself must be exact, or nothing is served from it
            raise RuntimeError(f"ONNX export of {model_path} differs from the model (min cosine {cos_fp32:.5f})")
        meta = {"fp32": "model.onnx", "int8": "model.int8.onnx", "min_cosine_fp32_vs_torch": round(cos_fp32, 6),
                "min_cosine_int8_vs_fp32": round(cos_int8, 6), "held_out_texts": len(texts),
                "min_cosine_required": MIN_COSINE, "max_seq_length": max_seq_length,
                "serve": "model.int8.onnx" if cos_int8 >= MIN_COSINE else "model.onnx"}
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        return meta
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_meta(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(out_dir) / META
    return json.loads(p.read_text()) if p.is_file() else None


class OnnxEmbedder:
    """encode(texts) -> unit vectors [n, dim] (numpy), like SentenceTransformer.encode with
    normalize_embeddings=True. Batches are padded to their longest text."""

    def __init__(self, onnx_dir: str | os.PathLike, max_seq_length: int, file: str | None = None,
                 session_options: Any = None):
        import onnxruntime as ort

        self.dir = Path(onnx_dir)
        meta = read_meta(self.dir) or {}
        self.file = file or meta.get("serve", "model.onnx")
        self.session = ort.InferenceSession(str(self.dir / self.file), sess_options=session_options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = _tokenizer(self.dir, max_seq_length)

    def encode(self, texts: Sequence[str]):
        import numpy as np

        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        vecs = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
