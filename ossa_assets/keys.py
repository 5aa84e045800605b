"""Every asset key in one place: `[stage, artifact]` nouns, shared by the stages that read them."""

import dagster as dg

SOURCE_DOCUMENTS = dg.AssetKey(["corpora", "source_documents"])
CURATED_CORPUS = dg.AssetKey(["corpora", "curated_corpus"])
BASE_MODEL = dg.AssetKey(["finetune", "base_model"])
TOKENIZED_CORPUS = dg.AssetKey(["finetune", "tokenized_corpus"])
DOMAIN_CHECKPOINT = dg.AssetKey(["finetune", "domain_checkpoint"])
MULTITASK_ADAPTER = dg.AssetKey(["lora", "multitask_adapter"])
REALTIME_ADAPTER = dg.AssetKey(["lora", "realtime_adapter"])
EMBEDDING_PAIRS = dg.AssetKey(["embeddings", "embedding_pairs"])
EMBEDDING_MODEL = dg.AssetKey(["embeddings", "embedding_model"])
EMBEDDING_EVAL = dg.AssetKey(["embeddings", "embedding_eval"])
VECTOR_INDEX = dg.AssetKey(["embeddings", "vector_index"])
ONNX_MODEL = dg.AssetKey(["quantize", "onnx_model"])
INT8_MODEL = dg.AssetKey(["quantize", "int8_model"])
RELEASE = dg.AssetKey(["serving", "release"])
DEPLOYMENT = dg.AssetKey(["serving", "deployment"])
