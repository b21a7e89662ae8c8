"""Vision-language model backends for the model-driven stages (paper §pipeline steps 1, 3, 4).

  cache.py           on-disk response cache: a rerun after a crash repeats no paid call
  openai_backend.py  any OpenAI-compatible chat-completions endpoint (vLLM, sglang, ...) through the
                     official `openai` client: concurrency, retries with backoff, timeouts, per-item errors
  parse.py           robust parsing of model output (stage 1: the category list)
"""
