"""Commands: ``merge``, ``opt-out``, ``domain-embed``, ``domain-router``."""

from __future__ import annotations

import argparse
from typing import Dict, List

from ..cli_args import (
    add_checkpoint,
    add_overwrite,
    add_token_data,
    add_verify,
    checkpoint_input,
    claimed_output,
    int_list,
    token_inputs,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge 2-expert checkpoints (public + domain expert) into one MoE",
        description="Merge checkpoints grown from the same public model, each with one domain "
        "expert of any width, into one model: public expert first, then each input's domain "
        "expert in the order given. Refuses (naming the tensor) if shared weights differ.",
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help="2-expert checkpoints (model-only, trainer stepN/ or run folder)",
    )
    p.add_argument("--top-k", type=int, required=True, help="experts per token in the merged model")
    p.add_argument("--out", required=True, help="output model-only checkpoint directory")
    p.add_argument(
        "--router-from",
        nargs="+",
        metavar="EMB",
        help="domain embeddings files (olmo-flex domain-embed) for the router rows: one per "
        "expert (public first) or one per input",
    )
    add_overwrite(p)
    add_verify(p)
    p.set_defaults(run=_merge)

    p = sub.add_parser(
        "opt-out",
        help="switch experts off (same function as the model without them)",
        description="Write CKPT with experts switched off. By default the weights are copied and "
        "the config records the opt-out (reversible with --experts none); --drop removes them.",
    )
    add_checkpoint(p)
    p.add_argument(
        "--experts",
        required=True,
        type=_expert_ids,
        help="expert ids, e.g. 2 or 1,3; 'none' for all on",
    )
    p.add_argument("--out", required=True, help="output model-only checkpoint directory")
    p.add_argument("--drop", action="store_true", help="remove the experts' weights")
    add_overwrite(p)
    add_verify(p)
    p.set_defaults(run=_opt_out)

    p = sub.add_parser(
        "domain-embed",
        help="per-domain mean router inputs, for a domain-informed router",
        description="For each domain (token files), the mean over tokens of every MoE layer's "
        "input under CKPT's model; merge --router-from uses them as router rows.",
    )
    add_checkpoint(p)
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="[NAME=]GLOB",
        help="token files of one domain; repeat for several domains (in expert order)",
    )
    add_token_data(p, data=False, seq_len=2048, num_seqs=256, batch_size=8)
    p.add_argument("--normalize", action="store_true", help="scale each vector to unit L2 norm")
    p.add_argument("--out", required=True, help="output .safetensors file")
    add_overwrite(p)
    add_verify(p)
    p.set_defaults(run=_domain_embed)

    p = sub.add_parser(
        "domain-router",
        help="router rows that tell a domain's tokens from public data (for upcycle --router-from)",
        description="Per layer, fit the log-odds of the domain's token files against public token "
        "files on CKPT's router inputs (CKPT: the public model, dense or upcycled). Writes router "
        "rows (public, domain) and FlexOlmo's never-positive expert bias; upcycle --router-from "
        "starts the domain expert from it.",
    )
    add_checkpoint(p)
    p.add_argument("--data", required=True, metavar="GLOB", help="the domain's token files")
    p.add_argument("--public-data", required=True, metavar="GLOB", help="public token files")
    add_token_data(p, data=False, seq_len=2048, num_seqs=64, batch_size=8)
    p.add_argument(
        "--tokens-per-seq",
        type=int,
        default=64,
        help="evenly spaced positions of each window that enter the fit",
    )
    p.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on the standardised weights")
    p.add_argument("--out", required=True, help="output .safetensors file")
    add_overwrite(p)
    add_verify(p)
    p.set_defaults(run=_domain_router)


def _merge(args) -> int:
    from .merge import merge_experts

    inputs = [q for c in args.checkpoints for q in checkpoint_input(c, args.verify)]
    with claimed_output(args, args.out, inputs=inputs + list(args.router_from or [])):
        out = merge_experts(
            args.checkpoints,
            args.out,
            top_k=args.top_k,
            router_from=args.router_from,
            overwrite=args.overwrite,
        )
    print(f"merged {len(args.checkpoints)} experts -> {out}")
    return 0


def _expert_ids(text: str) -> List[int]:
    """``--experts``: expert ids like 2 or 1,3; ``none`` switches every expert back on."""
    return [] if text.strip().lower() in ("none", "") else int_list(text)


def _opt_out(args) -> int:
    from .optout import write_opt_out

    experts = args.experts
    inputs = checkpoint_input(args.checkpoint, args.verify)
    with claimed_output(args, args.out, inputs=inputs):
        out = write_opt_out(
            args.checkpoint, args.out, experts, drop=args.drop, overwrite=args.overwrite
        )
    verb = "dropped" if args.drop else "switched off"
    print(f"experts {experts or 'none'} {verb} -> {out}")
    return 0


def _domains(specs: List[str]) -> Dict[str, str]:
    from ..errors import UserError

    out: Dict[str, str] = {}
    for i, spec in enumerate(specs):
        name, sep, glob = spec.partition("=")
        if not sep:
            name, glob = f"domain{i}", spec
        if name in out:
            raise UserError(f"domain name {name!r} is given twice in --data")
        out[name] = glob
    return out


def _domain_embed(args) -> int:
    from .embeddings import compute_domain_embeddings, save_domain_embeddings

    domains = _domains(args.data)
    inputs = checkpoint_input(args.checkpoint, args.verify)
    inputs += [f for glob in domains.values() for f in token_inputs(glob)]
    with claimed_output(args, args.out, inputs=inputs, kind="file"):  # before the long pass
        emb = compute_domain_embeddings(
            args.checkpoint,
            domains,
            seq_len=args.seq_len,
            num_seqs=args.num_seqs,
            batch_size=args.batch_size,
            dtype=args.dtype,
            normalize=args.normalize,
        )
        out = save_domain_embeddings(args.out, emb, overwrite=args.overwrite)
    print(f"{len(emb)} domain embeddings ({', '.join(emb.names)}) -> {out}")
    return 0


def _domain_router(args) -> int:
    from ..errors import UserError
    from .domain_router import fit_domain_router, save_domain_router

    if args.tokens_per_seq < 1 or args.l2 < 0:
        raise UserError("--tokens-per-seq must be at least 1 and --l2 at least 0")
    inputs = checkpoint_input(args.checkpoint, args.verify)
    inputs += token_inputs(args.data) + token_inputs(args.public_data)
    with claimed_output(args, args.out, inputs=inputs, kind="file"):
        router = fit_domain_router(
            args.checkpoint, args.data, args.public_data, seq_len=args.seq_len,
            num_seqs=args.num_seqs, tokens_per_seq=args.tokens_per_seq, l2=args.l2,
            batch_size=args.batch_size, dtype=args.dtype,
        )  # fmt: skip
        out = save_domain_router(args.out, router, overwrite=args.overwrite)
    accuracy = ", ".join(f"{a:.3f}" for a in router.accuracy)
    print(f"domain router (accuracy per layer {accuracy}) -> {out}")
    return 0
