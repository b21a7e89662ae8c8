"""The paper's model-driven stages on real photos (SPEC §1 pipeline steps 1-4), and the model backends.

Backends (anything with `model` and `complete(ChatRequest list) -> ChatResult list`):
  openai_backend.py  any OpenAI-compatible chat-completions endpoint (vLLM, sglang, `hopchain serve`)
                     through the official `openai` client: concurrency, retries with backoff, timeouts
  engine_backend.py  a local Qwen2.5-VL / Qwen3-VL checkpoint on our JAX engine, batched, n samples
  cache.py           on-disk response cache: a rerun after a crash repeats no paid call
  backends.py        command-line model specs (a checkpoint directory or MODEL@URL) -> backends
Stages:
  parse.py, categories.py      1  the VLM lists object categories (robust JSON parsing)
  sam3.py                      2  SAM3 text-prompted instances (numpy pre/post-processing, NMS, 0-1000 boxes)
  query_writer.py, query_check.py  3  the VLM writes a query per set of 3-6 instances, shown crops;
                                  the output is held to the chain rules of SPEC §3
  solvers.py                   4  solvers must agree with the answer; a weaker model calibrates difficulty
  photo_pipeline.py, photo_cli.py  `hopchain synth --images`: the four stages over a photo folder, sharded
                                  and crash-safe, with per-stage accept/reject counts
  calibrate.py, annotation.py  `hopchain calibrate` (any dataset) and human annotation sheets
"""
