#!/usr/bin/env bash
# The embeddings baseline for bench_serving.py: infinity-emb 0.0.78 in a side venv that reuses
# this project's .venv packages (torch, transformers, fastapi) through a .pth file: its own pins
# (numpy < 2) would break the project's environment. Two shims, for the baseline only:
# transformers 5 removed batch_encode_plus, which infinity-emb 0.0.78 calls; orjson for its
# responses. Its optimum/ONNX engine needs transformers < 4.58, so it runs its torch engine.
#   bash bench/setup_infinity.sh [DIR]   (default .bench_infinity)
# (setup only: bench_serving.py prints the comparison's MET or MISSED)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.bench_infinity}
PY=$(readlink -f .venv/bin/python)
"$PY" -m venv "$DIR"
SITE=$("$DIR/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$(readlink -f .venv)/lib/python3.11/site-packages" > "$SITE/ossa_venv.pth"
cat > "$SITE/sitecustomize.py" <<'PY'
# bench baseline only: infinity-emb 0.0.78 calls batch_encode_plus, which transformers 5 removed
import transformers.tokenization_utils_base as _b

if not hasattr(_b.PreTrainedTokenizerBase, "batch_encode_plus"):
    _b.PreTrainedTokenizerBase.batch_encode_plus = lambda self, batch, **kw: self(batch, **kw)
PY
"$DIR/bin/python" -m pip install -q --no-deps infinity-emb==0.0.78 prometheus-fastapi-instrumentator==8.1.0 orjson
"$DIR/bin/infinity_emb" --help > /dev/null && echo "infinity-emb ready in $DIR"
