"""`hopchain serve` throughput: concurrent clients against a live server, batched vs one request per call.

  python benchmarks/serve.py [--preset tiny] [--clients 32] [--requests 64] [--max-tokens 32] [--n 1]

Builds a random checkpoint of a preset with transformers (no download), serves it with the real app
(uvicorn on localhost), and sends --requests chat completions (a small image + a question each) from
--clients threads through the official openai client, twice: with the server batching (--max-batch
64, 5 ms window) and with --max-batch 1 (each request its own engine call). Each configuration gets
one untimed warm-up pass first (compiles). Prints requests/s, completion tokens/s, mean batch size
and a markdown row for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build_checkpoint(preset: str, root: Path) -> Path:
    from hopchain_jax.configs.models import PRESETS
    from hf_tiny import hf_model_from_config
    from hopchain_jax.models.tokenizer import load_tokenizer
    path = root / preset
    hf_model_from_config(PRESETS[preset](), seed=0).save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def run_clients(url: str, model: str, requests: int, clients: int, max_tokens: int, n: int, image) -> dict:
    import openai
    from hopchain_jax.vlm.chat import user_message
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=600)

    def one(k: int):
        msg = user_message(f"Question {k}: how many objects are there?", images=[image])
        resp = client.chat.completions.create(model=model, messages=[msg], max_tokens=max_tokens, n=n,
                                              temperature=1.0, seed=k)
        return resp.usage.completion_tokens

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "requests_per_s": round(requests / seconds, 2),
            "completion_tokens_per_s": round(tokens / seconds, 1), "completion_tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--image-side", type=int, default=56)
    args = p.parse_args()

    import jax
    from engine_tiny import live_server
    from hopchain_jax.serve.app import build_app
    from hopchain_jax.vlm.engine_backend import EngineChatBackend
    image = np.random.default_rng(0).integers(0, 255, (args.image_side, args.image_side, 3), dtype=np.uint8)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(args.preset, Path(tmp))
        backend = EngineChatBackend(ckpt, name=args.preset)
        for label, max_batch in (("batched", 64), ("one_per_call", 1)):
            app = build_app(backend, max_batch=max_batch, batch_window_ms=5)
            with live_server(app) as url:
                run_clients(url, args.preset, min(args.requests, 2 * args.clients), args.clients, args.max_tokens,
                            args.n, image)  # warm-up: compiles this configuration's shapes
                calls0 = app.state.batcher.calls
                sizes0 = len(app.state.batcher.batch_sizes)
                res = run_clients(url, args.preset, args.requests, args.clients, args.max_tokens, args.n, image)
                sizes = app.state.batcher.batch_sizes[sizes0:]
                res["backend_calls"] = app.state.batcher.calls - calls0
                res["mean_batch"] = round(float(np.mean(sizes)), 2) if sizes else None
            results[label] = res
    out = {"preset": args.preset, "clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
           "n": args.n, "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
           "cpu": platform.processor() or platform.machine(), "jax": jax.__version__, **results,
           "speedup": round(results["batched"]["requests_per_s"] / results["one_per_call"]["requests_per_s"], 2)}
    print(json.dumps(out, indent=1))
    b, o = results["batched"], results["one_per_call"]
    print(f"| serve {args.preset}, {args.clients} clients, {args.requests} req x {args.max_tokens} tok | "
          f"{b['requests_per_s']} req/s ({b['completion_tokens_per_s']} tok/s, mean batch {b['mean_batch']}) | "
          f"{o['requests_per_s']} req/s one per call | {out['speedup']}x |")


if __name__ == "__main__":
    main()
