"""``olmo-flex eval``: Math2 (GSM8K 5-shot + minerva_math 4-shot) of a checkpoint with lm-eval."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="Math2 of a checkpoint: export to transformers, run lm-eval GSM8K and minerva_math",
        description=(
            "Export CKPT (an OLMo-core checkpoint; a transformers directory is used as is) and run "
            "the lm-eval harness: GSM8K 5-shot and minerva_math 4-shot; Math2 = their mean. "
            "Writes OUT/math2.json with the scores and every setting that changes them. "
            "Needs the eval extra and a GPU; --dry-run prints the plan only."
        ),
    )
    p.add_argument(
        "ckpt", help="checkpoint directory (model-only, trainer stepN/, run folder, or HF)"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tasks", default="gsm8k,minerva_math", help="comma-separated (default: both)")
    p.add_argument("--tokenizer", help="HF tokenizer directory copied into the export")
    p.add_argument("--batch-size", default="8", help="lm-eval --batch_size (default 8)")
    p.add_argument("--dtype", default="bfloat16", help="model dtype (default bfloat16)")
    p.add_argument("--device", default="cuda", help="lm-eval --device (default cuda)")
    p.add_argument(
        "--limit", type=float, help="lm-eval --limit (examples per task; for smoke runs)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the commands and parsing, run nothing"
    )
    p.set_defaults(run=_eval)


def _eval(args) -> int:
    import contextlib

    from ..cli_args import claimed_output
    from .harness import HarnessSettings, run_math2

    settings = HarnessSettings(
        batch_size=args.batch_size, dtype=args.dtype, device=args.device, limit=args.limit
    )
    with contextlib.ExitStack() as stack:
        if not args.dry_run:  # OUT collects the export and lm-eval's results; a rerun redoes them
            inputs = [args.ckpt] + ([args.tokenizer] if args.tokenizer else [])
            stack.enter_context(claimed_output(args, args.out, inputs=inputs, resume=True))
        return _run(args, settings, run_math2)


def _run(args, settings, run_math2) -> int:
    record = run_math2(
        args.ckpt,
        args.out,
        tasks=[t for t in args.tasks.split(",") if t],
        tokenizer=args.tokenizer,
        settings=settings,
        dry_run=args.dry_run,
    )
    if not args.dry_run:
        for name, r in record["results"].items():
            print(f"{name:<14} {r['score']:6.2f}  ({r['metric']}, {r['num_fewshot']}-shot)")
        print(f"{'Math2':<14} {record['math2']:6.2f}")
    return 0
