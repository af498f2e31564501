"""Commands ``olmo-flex importance``, ``compare-scores``, ``allocate`` and ``prune``."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import List, Optional

from ..atomic import atomic_file, write_atomic
from ..cli_args import (
    add_checkpoint,
    add_device,
    add_overwrite,
    add_token_data,
    add_verify,
    add_weight_dtype,
    checkpoint_input,
    claimed_output,
    int_list,
    require_positive,
    token_inputs,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "importance",
        help="score every expert neuron on calibration data (Minitron activation importance)",
        description="Score every expert neuron of a checkpoint on calibration token files and write "
        "a safetensors scores file. Runs on many ranks with torchrun -m olmo_flex_ext.cli; an "
        "interrupted run continues when started again with the same arguments.",
    )
    add_checkpoint(p)
    add_token_data(p, batch_size=1, batch_help="sequences per forward on each rank")
    p.add_argument("--out", required=True, help="scores file to write (.safetensors)")
    p.add_argument("--method", default="minitron", help="minitron (default) or minitron-weighted")
    add_device(p)
    add_weight_dtype(
        p,
        "--model-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="model weights while scoring",
    )
    p.add_argument("--save-every", type=int, default=64, help="sequences between partial saves")
    add_overwrite(p, "the scores file")
    add_verify(p)
    p.set_defaults(run=_importance)

    p = sub.add_parser(
        "compare-scores",
        help="how much the top-W neurons of two scores files differ, per layer and expert",
    )
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--width", type=int, required=True, help="compare the top-W sets")
    p.add_argument("--plot", help="also write a PNG plot here")
    p.add_argument("--json", dest="json_out", help="also write the table as JSON here")
    add_overwrite(p, "the plot and JSON files")
    p.set_defaults(run=_compare)

    p = sub.add_parser(
        "allocate",
        help="choose widths per layer and expert from importance under a parameter budget",
    )
    p.add_argument("scores")
    _budget_args(p, required=True)
    p.add_argument("--out", help="write the widths as JSON (usable with prune --widths-file)")
    add_overwrite(p, "the widths file")
    p.set_defaults(run=_allocate)

    p = sub.add_parser(
        "prune",
        help="write a checkpoint whose experts keep their most important neurons",
        description="Prune expert MLPs to uniform widths (--widths) or importance-allocated ones "
        "(--budget / --budget-width), streaming tensor by tensor into a model-only checkpoint.",
    )
    add_checkpoint(p)
    p.add_argument("--scores", required=True, help="scores file of this checkpoint (importance)")
    p.add_argument(
        "--widths", type=int_list, help="one width per expert for every layer, e.g. 11008,5504"
    )
    p.add_argument("--widths-file", help="JSON widths per layer (from olmo-flex allocate --out)")
    _budget_args(p, required=False)
    p.add_argument("--prune-public", action="store_true", help="allow shrinking expert 0")
    p.add_argument("--out", required=True, help="model-only checkpoint directory to write")
    add_overwrite(p)
    add_verify(p)
    p.set_defaults(run=_prune)


def _budget_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--budget", help="parameters for the pruned experts' MLPs together, e.g. 2.2B")
    g.add_argument("--budget-width", type=int, help="as many parameters as this uniform width")
    p.add_argument(
        "--experts", type=int_list, help="experts to prune, e.g. 1 or 1,2 (default: all but 0)"
    )
    p.add_argument("--multiple", type=int, default=128, help="widths are multiples of this")
    p.add_argument("--min-width", type=int, help="smallest width per layer (default --multiple)")
    p.add_argument("--normalize", choices=["layer", "none"], default="layer")


# ---- importance ---------------------------------------------------------------------------------


def _importance(args) -> int:
    from olmo_core.distributed.utils import get_rank

    from ..cli_args import command_device, torch_dtype
    from ..train.experiment import process_group
    from .importance import checkpoint_importance

    require_positive(args, "seq_len", "num_seqs", "batch_size", "save_every")
    out = Path(args.out)
    inputs = checkpoint_input(args.checkpoint, args.verify) + token_inputs(args.data)
    with process_group(), claimed_output(args, out, inputs=inputs, kind="file"):
        scores = checkpoint_importance(
            args.checkpoint,
            args.data,
            seq_len=args.seq_len,
            num_seqs=args.num_seqs,
            method=args.method,
            batch_size=args.batch_size,
            token_dtype=args.dtype,
            device=command_device(args.device),
            dtype=torch_dtype(args.model_dtype),
            state_path=out.with_name(f".{out.name}.partial.pt"),
            save_every=args.save_every,
        )
        if get_rank() == 0:
            scores.save(out)
            print(
                f"wrote {out}: {args.method} scores of {len(scores.scores)} layers, "
                f"{args.num_seqs} x {args.seq_len} calibration tokens"
            )
    return 0


# ---- compare-scores -----------------------------------------------------------------------------


def _compare(args) -> int:
    from ..errors import UserError

    if args.width <= 0:
        raise UserError(f"--width must be positive, got {args.width}")
    with contextlib.ExitStack() as stack:
        for out in (args.plot, args.json_out):
            if out:
                stack.enter_context(claimed_output(args, out, inputs=[args.a, args.b], kind="file"))
        return _compare_claimed(args)


def _compare_claimed(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..errors import UserError
    from .scores import ImportanceScores, describe_calibration, topk_overlap

    a, b = ImportanceScores.load(args.a), ImportanceScores.load(args.b)
    if a.widths != b.widths:
        raise UserError(
            f"{args.a} and {args.b} are for models with different expert widths; compare scores "
            "of the same model"
        )
    console = Console()
    if a.fingerprint != b.fingerprint:
        console.print("[yellow]note: the two files were computed on different models[/]")
    n_experts = len(a.widths[0])
    rows = []
    for i in range(a.num_layers):
        row = {"layer": i}
        for e in range(n_experts):
            w = a.widths[i][e]
            row[f"expert{e}"] = (
                None
                if args.width >= w
                else 1 - topk_overlap(a.scores[i][e], b.scores[i][e], args.width)
            )
        rows.append(row)
    table = Table(title=f"share of the top-{args.width} neurons that differ")
    table.add_column("layer", justify="right")
    experts = [e for e in range(n_experts) if any(r[f"expert{e}"] is not None for r in rows)]
    for e in experts:
        table.add_column(f"expert {e}", justify="right")
    for r in rows:
        table.add_row(str(r["layer"]), *[_pct(r[f"expert{e}"]) for e in experts])
    for e in experts:
        vals = [r[f"expert{e}"] for r in rows if r[f"expert{e}"] is not None]
        console.print(
            f"expert {e}: {100 * sum(vals) / len(vals):.1f}% of the top-{args.width} differ "
            "on average"
        )
    console.print(table)
    console.print(f"A: {args.a} ({describe_calibration(a.metadata)})")
    console.print(f"B: {args.b} ({describe_calibration(b.metadata)})")
    if not experts:
        console.print(f"every expert is at most {args.width} wide: nothing to compare")
    if args.json_out:
        write_atomic(args.json_out, json.dumps({"width": args.width, "differ": rows}, indent=1))
    if args.plot and experts:
        _plot(rows, experts, args)
        console.print(f"wrote {args.plot}")
    return 0


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _plot(rows, experts, args) -> None:
    from ..errors import UserError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'olmo-flex-ext[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for e in experts:
        xs = [r["layer"] for r in rows if r[f"expert{e}"] is not None]
        ys = [100 * r[f"expert{e}"] for r in rows if r[f"expert{e}"] is not None]
        ax.plot(xs, ys, marker="o", label=f"expert {e}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel(f"top-{args.width} neurons that differ (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{Path(args.a).stem} vs {Path(args.b).stem}")
    ax.legend()
    fig.tight_layout()
    with atomic_file(args.plot) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


# ---- allocate and prune -------------------------------------------------------------------------


def _budget_widths(args, scores, d_model: int) -> List[List[int]]:
    from ..errors import UserError
    from .allocate import allocate_for_budget, parse_count

    if args.experts and 0 in args.experts and not getattr(args, "prune_public", True):
        raise UserError("--experts includes the public expert 0; pass --prune-public to prune it")
    return allocate_for_budget(
        scores,
        budget_width=args.budget_width,
        budget_params=None if args.budget is None else parse_count(args.budget),
        d_model=d_model,
        experts=args.experts,
        multiple=args.multiple,
        min_width=args.min_width,
        normalize=args.normalize,
    )


def _allocate(args) -> int:
    from rich.console import Console

    from ..errors import UserError
    from .scores import ImportanceScores

    with contextlib.ExitStack() as stack:
        if args.out:
            stack.enter_context(claimed_output(args, args.out, inputs=[args.scores], kind="file"))
        scores = ImportanceScores.load(args.scores)
        d_model = int(scores.metadata.get("d_model", 0))
        if args.budget is not None and not d_model:
            raise UserError(f"{args.scores} does not record d_model; use --budget-width instead")
        widths = _budget_widths(args, scores, d_model)
        _print_widths(Console(), scores.widths, widths, d_model)
        if args.out:
            text = json.dumps({"expert_widths": widths, "scores": args.scores}, indent=1)
            write_atomic(args.out, text)
    return 0


def _read_widths_file(path: str) -> List[List[int]]:
    """``expert_widths`` of a widths file (``olmo-flex allocate --out``): a list per layer of
    non-negative integers, one per expert."""
    from ..errors import UserError

    try:
        widths = json.loads(Path(path).read_text())["expert_widths"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read widths from {path} ({type(e).__name__}: {e})") from None
    ok = isinstance(widths, list) and all(
        isinstance(layer, list)
        and all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in layer)
        for layer in widths
    )
    if not ok:
        raise UserError(
            f"{path}: expert_widths must be a list per layer of non-negative integers (one per "
            "expert), as olmo-flex allocate --out writes it"
        )
    return widths


def _print_widths(console, original, widths, d_model: int) -> None:
    from rich.table import Table

    table = Table(title="expert widths per layer")
    table.add_column("layer", justify="right")
    for e in range(len(original[0])):
        table.add_column(f"expert {e}", justify="right")
    for i, (o, w) in enumerate(zip(original, widths)):
        table.add_row(str(i), *[f"{n}" + ("" if n == m else f" (of {m})") for n, m in zip(w, o)])
    console.print(table)
    if d_model:
        before = 3 * d_model * sum(map(sum, original))
        after = 3 * d_model * sum(map(sum, widths))
        console.print(f"expert parameters: {before:,d} -> {after:,d} ({after / before:.1%})")


def _prune(args) -> int:
    from ..errors import UserError

    chosen = [
        x for x in (args.widths, args.widths_file, args.budget, args.budget_width) if x is not None
    ]
    if len(chosen) != 1:
        raise UserError("give exactly one of --widths, --widths-file, --budget, --budget-width")
    inputs = checkpoint_input(args.checkpoint, args.verify) + [args.scores]
    inputs += [args.widths_file] if args.widths_file else []
    with claimed_output(args, args.out, inputs=inputs, kind="dir"):
        return _prune_claimed(args)


def _prune_claimed(args) -> int:
    from rich.console import Console

    from ..checkpoint import read_model_config, resolve_checkpoint
    from ..models import expert_widths_per_layer
    from .allocate import check_widths, keep_indices, uniform_widths
    from .scores import ImportanceScores, checkpoint_fingerprint
    from .slicing import prune_checkpoint

    src = resolve_checkpoint(args.checkpoint)
    config = read_model_config(src)
    original = expert_widths_per_layer(config)
    scores = ImportanceScores.load(args.scores)
    scores.check_model(original, checkpoint_fingerprint(src), what=f"the checkpoint {src}")
    if args.widths is not None:
        widths = uniform_widths(original, args.widths, prune_public=args.prune_public)
    elif args.widths_file is not None:
        widths = _read_widths_file(args.widths_file)
    else:
        widths = _budget_widths(args, scores, config.d_model)
    check_widths(original, widths, prune_public=args.prune_public)
    keep = keep_indices(scores, widths)
    info = {
        "pruned_from": str(src),
        "scores": str(args.scores),
        "scores_fingerprint": scores.fingerprint,
        "method": scores.metadata.get("method"),
        "calibration": scores.metadata.get("calibration"),
        "expert_widths": widths,
    }
    prune_checkpoint(src, args.out, keep, overwrite=args.overwrite, info=info)
    console = Console()
    _print_widths(console, original, widths, config.d_model)
    console.print(f"wrote {args.out}")
    return 0
