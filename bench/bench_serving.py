"""The serving runtime under load, against the naive server it replaced, in one run.

    .venv/bin/python bench/bench_serving.py [--seconds 5] [--repeats 3]

Baselines in the same run: the pre-batching server (--naive), a per-request PyTorch server of
the same checkpoint (--naive-torch), the engines without their KV-cache graph and the
embedders on torch. Builds a servable deployment like `make run`'s (configs/tiny.yaml's decoder, int8, untrained
weights: speed does not depend on them; the packaged MiniLM as the embedding model, whose
production counterparts add a projection), starts each server as its own process and drives
it with bench/loadgen.py (closed loop, keep-alive, fresh prompts) on the same 2 cores. Reports
medians of `--repeats` runs and the load generator's own CPU share, then each target with the
measured figure and MET or MISSED (verdict.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from verdict import Verdicts  # noqa: E402

GEN = '{"prompt": "openapi: 3.0.0 request {n}", "max_new_tokens": 16}'
EMB = '{"input": "list the pets of owner {n}", "model": "docs"}'
SEARCH = '{"query": "run the unit tests {n}", "limit": 5}'


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(state: Path, naive: bool, env: dict, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _port()
    cmd = [sys.executable, "-m", "ossa_serving", "--port", str(port), "--state", str(state), *extra]
    proc = subprocess.Popen(cmd + (["--naive"] if naive else []), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    probe = "/health" if naive or extra else "/ready"
    for _ in range(1200):
        try:
            if httpx.get(url + probe, timeout=2).status_code == 200:
                # naive: its engines load on the first request; warm them outside the measurement
                httpx.post(url + "/api-model/v1", json={"prompt": "warm", "max_new_tokens": 2}, timeout=60)
                httpx.post(url + "/v1/search", json={"query": "warm"}, timeout=60)
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def load(url: str, path: str, body: str, conns: int, seconds: float, timeout_s: float = 10.0,
         rate: float | None = None) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "loadgen.py"), url, path, body, str(conns),
                          str(seconds), str(timeout_s), *([str(rate)] if rate else [])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    keys = ("ok_rps", "rps", "p50_ms", "p99_ms", "cpu_s", "seconds")
    m = {k: statistics.median([r[k] for r in runs if r[k] is not None] or [float("nan")]) for k in keys}
    m["timeouts"] = sum(r["timeouts"] for r in runs)
    m["status"] = {}
    for r in runs:
        for k, v in r["status"].items():
            m["status"][k] = m["status"].get(k, 0) + v
    m["retry_after"] = sum(r["retry_after"] for r in runs)
    m["loadgen_cpu_share"] = m["cpu_s"] / (m["seconds"] * (os.cpu_count() or 1))
    return m


def sentence_flops() -> tuple[float, int]:
    """Multiply-adds of the packaged MiniLM encoder for one bench sentence (attention scores
    are negligible at this length), as FLOPs."""
    from ossa_assets.lib.embeddings import load_embedder

    m = load_embedder(None, device="cpu")
    weights = sum(p.numel() for n, p in m.named_parameters() if "embeddings" not in n)
    tokens = len(m.tokenizer(EMB.replace("{n}", "123-4567").split('"')[3])["input_ids"])
    return 2.0 * weights * tokens, tokens


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    import numpy as np

    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overload-seconds", type=float, default=30.0)
    args = ap.parse_args()

    from tests.serving.deployment import build_deployment, tiny_arch

    arch, vocab = tiny_arch()
    sample = [p.read_text(errors="replace") for p in (ROOT / "ossa_assets" / "corpora" / "sample").rglob("*")
              if p.is_file()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    t = time.perf_counter()
    dep = build_deployment(tmp, arch=arch, vocab_size=vocab, int8=True, points=1000, texts=sample)
    print(f"deployment built in {time.perf_counter() - t:.1f}s: tiny decoder {arch}, int8; 1000 points per index")
    env = {**os.environ, "OSSA_DATA_ROOT": str(tmp)}
    # the same engines without their KV-cache graph: the runtime recomputes every context per step
    import dataclasses

    from ossa_assets.lib.deployment import read_state, write_state

    st = read_state(dep.state)
    nokv = write_state(tmp / "serving" / "deployment_nokv.json", dataclasses.replace(
        st, routes={r: dataclasses.replace(s, kv_model_file=None) for r, s in st.routes.items()}))

    results: dict[str, dict] = {}

    def run(name, url, path, body, conns, timeout_s=10.0, rate=None, seconds=None, repeats=None):
        runs = [load(url, path, body, conns, seconds or args.seconds, timeout_s, rate)
                for _ in range(repeats or args.repeats)]
        m = results[name] = median_of(runs)
        print(f"{name:34s} {m['ok_rps']:8.1f} ok req/s  p50 {m['p50_ms']:7.2f} ms  p99 {m['p99_ms']:7.2f} ms  "
              f"statuses {m['status']}  timeouts {m['timeouts']}  loadgen cpu {m['loadgen_cpu_share']:.0%}", flush=True)

    proc, url = start(dep.state, naive=True, env=env)
    try:
        run("naive generate 1 conn", url, "/api-model/v1", GEN, 1)
        run("naive generate 16 conns", url, "/api-model/v1", GEN, 16)
        run("naive search 16 conns", url, "/v1/search", SEARCH, 16)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # a per-request PyTorch server of the checkpoint the engines were exported from
    proc, url = start(dep.state, naive=False, env=env, extra=("--naive-torch", str(tmp / "hf")))
    try:
        run("naive torch generate 1 conn", url, "/api-model/v1", GEN, 1)
        run("naive torch generate 16 conns", url, "/api-model/v1", GEN, 16)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    # infinity-emb serving the same model files (bench/setup_infinity.sh makes its venv)
    infinity = ROOT / ".bench_infinity" / "bin" / "infinity_emb"
    if infinity.exists():
        from ossa_assets.lib.embeddings import packaged_minilm_path

        port = _port()
        model = packaged_minilm_path()
        proc = subprocess.Popen([str(infinity), "v2", "--model-id", model, "--port", str(port), "--engine", "torch",
                                 "--device", "cpu", "--host", "127.0.0.1"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import httpx

            url = f"http://127.0.0.1:{port}"
            for _ in range(1200):
                try:
                    if httpx.post(url + "/embeddings", json={"input": ["warm"], "model": model}, timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            run("infinity-emb: embeddings 64 conns", url, "/embeddings", EMB.replace('"docs"', json.dumps(model)), 64)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    else:
        print("infinity-emb baseline skipped: run bench/setup_infinity.sh first", flush=True)

    # the same engines without their KV-cache graph, and the embedders on torch instead of ONNX
    proc, url = start(nokv, naive=False, env={**env, "OSSA_SERVE_EMBEDDER_BACKEND": "torch"})
    try:
        run("no KV cache: generate 16 conns", url, "/api-model/v1", GEN, 16)
        run("no KV cache: generate 64 conns", url, "/api-model/v1", GEN, 64)
        run("torch embedder: embeddings 64 conns", url, "/v1/embeddings", EMB, 64)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    proc, url = start(dep.state, naive=False, env=env)
    try:
        run("generate 1 conn", url, "/api-model/v1", GEN, 1)
        run("generate 16 conns", url, "/api-model/v1", GEN, 16)
        run("generate 64 conns", url, "/api-model/v1", GEN, 64)
        run("embeddings 1 conn", url, "/v1/embeddings", EMB, 1)
        run("embeddings 64 conns", url, "/v1/embeddings", EMB, 64)
        run("search 16 conns", url, "/v1/search", SEARCH, 16)
        run("search 64 conns", url, "/v1/search", SEARCH, 64)
        # 2x the sustainable rate (this run's 64-connection throughput), open loop: Poisson
        # arrivals that do not wait for answers, as many independent callers overload a service
        rate = 2 * results["generate 64 conns"]["ok_rps"]
        run("overload: generate at 2x, open loop", url, "/api-model/v1", GEN, 0, timeout_s=30.0, rate=rate,
            seconds=args.overload_seconds, repeats=1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    r = results
    v = Verdicts()
    g64, g16, n16 = r["generate 64 conns"], r["generate 16 conns"], r["naive generate 16 conns"]
    v.at_least("/api-model/v1 req/s at 64 connections", g64["ok_rps"], 1000)
    v.at_most("/api-model/v1 p99 at 64 connections", g64["p99_ms"], 100, " ms")
    v.at_least("/api-model/v1 at 16 connections / naive server at 16", g16["ok_rps"] / max(n16["ok_rps"], 1e-9), 5)
    e64 = r["embeddings 64 conns"]
    v.at_least("/v1/embeddings req/s at 64 connections", e64["ok_rps"], 1000)
    v.at_most("/v1/embeddings p99 at 64 connections", e64["p99_ms"], 100, " ms")
    inf = r.get("infinity-emb: embeddings 64 conns")
    v.at_least("/v1/embeddings / infinity-emb throughput, both at 64 connections",
               e64["ok_rps"] / inf["ok_rps"] if inf else None, 1.0)
    if inf:
        print(f"infinity-emb at 64 connections: {inf['ok_rps']:.1f} req/s, p99 {inf['p99_ms']} ms "
              f"(ours: {e64['ok_rps']:.1f} req/s, p99 {e64['p99_ms']} ms)")
    s64 = r["search 64 conns"]
    v.at_least("/v1/search req/s at 64 connections", s64["ok_rps"], 300)
    v.at_most("/v1/search p99 at 64 connections", s64["p99_ms"], 100, " ms")
    o = r["overload: generate at 2x, open loop"]
    print(f"overload: offered {2 * g64['ok_rps']:.0f} req/s for {args.overload_seconds:g}s; answered {o['ok_rps']:.0f}/s, "
          f"refused {o['status'].get('429', 0)}")
    fivexx = sum(n for k, n in o["status"].items() if k.startswith("5"))
    refused = o["status"].get("429", 0)
    v.at_most("overload: timeouts", o["timeouts"], 0)
    v.at_most("overload: 5xx answers", fivexx, 0)
    v.at_least("overload: share of 429s carrying Retry-After", o["retry_after"] / refused if refused else None, 1.0)
    v.at_most("overload: admitted p99 / p99 at 16 connections", o["p99_ms"] / g16["p99_ms"], 2.0)
    t16 = r["naive torch generate 16 conns"]
    print(f"\n/api-model/v1 at 16 connections / naive per-request PyTorch server at 16: "
          f"{g16['ok_rps'] / max(t16['ok_rps'], 1e-9):.1f}x ({t16['ok_rps']:.1f} req/s, p99 {t16['p99_ms']} ms; "
          f"1 connection {r['naive torch generate 1 conn']['ok_rps']:.1f} req/s)")
    print(f"\nKV cache / recompute at 64 connections: {g64['ok_rps'] / max(r['no KV cache: generate 64 conns']['ok_rps'], 1e-9):.2f}x"
          f" (16: {g16['ok_rps'] / max(r['no KV cache: generate 16 conns']['ok_rps'], 1e-9):.2f}x)")
    flops, tokens = sentence_flops()
    peak = matmul_peak_flops()
    share = e64["ok_rps"] * flops / peak
    print(f"\nembeddings: {tokens} tokens per bench sentence, {flops / 1e9:.3f} GFLOP each (2 x encoder weights x tokens); "
          f"this machine's fp32 matmul peak (numpy, all cores, same run) {peak / 1e9:.0f} GFLOP/s: "
          f"{e64['ok_rps']:.0f} req/s uses {share:.0%} of it; 1000 req/s would need {1000 * flops / peak:.0%}. "
          f"ONNX / torch embedder: {e64['ok_rps'] / max(r['torch embedder: embeddings 64 conns']['ok_rps'], 1e-9):.2f}x")
    tps = g64["ok_rps"] * 16 / (os.cpu_count() or 1)
    print(f"\ngeneration: {tps:.0f} new tokens/s per core at 64 connections "
          f"(naive at 16: {n16['ok_rps'] * 16 / (os.cpu_count() or 1):.0f}); "
          f"search naive 16 conns {r['naive search 16 conns']['ok_rps']:.1f} req/s vs {r['search 16 conns']['ok_rps']:.1f}")
    return v.report()


if __name__ == "__main__":
    raise SystemExit(main())
