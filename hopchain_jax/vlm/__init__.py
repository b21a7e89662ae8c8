"""Vision-language model backends for the model-driven stages (paper §pipeline steps 1, 3, 4).

  cache.py           on-disk response cache: a rerun after a crash repeats no paid call
  openai_backend.py  any OpenAI-compatible chat-completions endpoint (vLLM, sglang, ...) through the
                     official `openai` client: concurrency, retries with backoff, timeouts, per-item errors
  parse.py           robust parsing of model output (stage 1: the category list)
  categories.py      stage 1: a VLM lists the object categories (CategoryIdentifier protocol)
  query_check.py     stage 3: a VLM-written query's JSON, held to the chain rules of SPEC §3
  solvers.py         stage 4: solver agreement with the composer's answer, then difficulty calibration
Not here yet (issue 12): the JAX-engine backend and `hopchain serve`, SAM3 (stage 2), the stage-3
prompt with instance crops, `hopchain calibrate` and the `hopchain synth --images` run that ties them together.
"""
