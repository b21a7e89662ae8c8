"""Record variants (SPEC §3, docs/record_schema.md): one source for the CLIs, filters, summaries and configs.
No imports, so building a command-line parser from it stays cheap."""

CHAIN_VARIANTS = ("full", "half", "single")   # a synthesized chain and its two ablations (the paper's 70.4/66.7/64.3)
EXTERNAL = "external"                          # records brought in by `hopchain import` (no chain behind them)
ALL_VARIANTS = CHAIN_VARIANTS + (EXTERNAL,)
