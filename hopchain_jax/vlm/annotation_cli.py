"""`hopchain annotate`: people as the stage-4 solvers.

  hopchain annotate export DIR --out SHEETDIR [--annotators 4 --limit N --seed S --variant full]
      SHEETDIR/sheet.csv + images/ + index.html + README.txt go to the annotators;
      SHEETDIR/key.json (the answers) stays with you
  hopchain annotate import SHEETDIR/sheet.csv [--key SHEETDIR/key.json] --out VERDICTS.jsonl [--required M]
      checks every answer against the key; then
      hopchain export DIR --jsonl OUT --verdicts VERDICTS.jsonl   (rejected queries are left out)
"""
from __future__ import annotations

import argparse
import json
import sys

from hopchain_jax.variants import ALL_VARIANTS

# = calibrate.DEFAULT_VARIANTS; not imported so that building the parser stays cheap (no JAX, no I/O)
DEFAULT_VARIANTS = ("full", "external")


def add_annotate_parser(subparsers) -> None:
    """Add `annotate export` and `annotate import` to an argparse subparsers object (sets fn=...)."""
    a = subparsers.add_parser("annotate", help="human annotation sheets: people as the stage-4 solvers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = a.add_subparsers(dest="annotate_command", required=True)

    e = sub.add_parser("export", help="write a sheet (CSV + images) to send to annotators, and its answer key")
    e.add_argument("dir", help="dataset directory")
    e.add_argument("--out", required=True, help="new folder for the sheet (never overwritten)")
    e.add_argument("--annotators", type=int, default=4, help="answer columns, one per person (default 4)")
    e.add_argument("--limit", type=int, help="at most this many questions (a random sample)")
    e.add_argument("--seed", type=int, default=0, help="seed of the shuffle / sample (default 0)")
    e.add_argument("--variant", nargs="+", choices=list(ALL_VARIANTS),
                   default=list(DEFAULT_VARIANTS), help="record variants (default: full external)")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(fn=run_annotate_export)

    i = sub.add_parser("import", help="check a filled sheet against its key and write the verdicts")
    i.add_argument("sheet", help="the filled sheet.csv (comma, semicolon or tab separated)")
    i.add_argument("--key", help="its key.json (default: key.json next to the sheet)")
    i.add_argument("--out", required=True, help="verdict file (JSON Lines; merged into an existing one)")
    i.add_argument("--required", type=int, help="answers needed to accept a query (default: all annotators)")
    i.add_argument("--json", action="store_true", help="print summary and problems as JSON")
    i.set_defaults(fn=run_annotate_import)


def _fail(what: str, message: str) -> int:
    print(f"hopchain annotate {what}: {message}", file=sys.stderr)
    return 2


def run_annotate_export(args: argparse.Namespace) -> int:
    from hopchain_jax.vlm.annotation import export_sheet
    if args.annotators < 1:
        return _fail("export", "--annotators must be >= 1")
    try:
        done = export_sheet(args.dir, args.out, annotators=args.annotators, variants=tuple(args.variant),
                            limit=args.limit, seed=args.seed, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        return _fail("export", str(e))
    print(f"wrote {done.items} questions to {done.sheet} (images in {done.out_dir / 'images'}, "
          f"view {done.out_dir / 'index.html'});\nsend sheet.csv, images/, index.html and README.txt; keep "
          f"{done.key} (the answers) to yourself for `hopchain annotate import {done.sheet} --out VERDICTS.jsonl`")
    return 0


def run_annotate_import(args: argparse.Namespace) -> int:
    """Exit 0 when every row was readable, 1 when some rows/cells had problems (the verdicts of the rest
    are written), 2 when nothing could be imported."""
    from hopchain_jax.vlm.annotation import format_import, import_sheet, write_verdicts
    try:
        result = import_sheet(args.sheet, args.key, required=args.required)
        total = write_verdicts(result, args.out)
    except (ValueError, OSError) as e:
        return _fail("import", str(e))
    if args.json:
        print(json.dumps({"summary": result["summary"], "problems": result["problems"]}, indent=1))
    else:
        print(format_import(result))
        print(f"wrote {len(result['verdicts'])} verdicts to {args.out} ({total} in the file)")
    return 1 if result["problems"] else 0
