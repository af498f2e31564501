"""Neuron importance of every expert MLP, measured on calibration data.

Scores are collected with forward hooks on each layer's
:class:`~olmo_flex_ext.nn.moe.ExpertProbe`, which sees the SwiGLU activations (the input to
``w2``) the MoE computes anyway, so scoring adds a few elementwise operations to a plain forward
pass and never runs the experts a second time.

Methods (``METHODS``):

- ``minitron`` (default): for each neuron, ``|silu(x W1^T) * (x W3^T)|`` averaged over the positions
  of each calibration sequence routed to the expert, then the L2 norm of those averages over the
  sequences (Minitron's activation importance, as ARCHITECTURE.md defines it).
- ``minitron-weighted``: the same with each activation multiplied by the router probability of the
  expert for that token, i.e. the neuron's share of what actually reaches the layer output; it
  ranks neurons of rarely chosen experts lower.

The L2 over sequences is kept as a running sum of squares (float64) plus counts, which is what is
summed across ranks (each rank scores its share of the sequences) and what is saved periodically so
an interrupted run continues where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from olmo_core.distributed.utils import get_rank, get_world_size

from ..atomic import atomic_file
from ..data.tokens import TokenFiles, Window
from ..errors import UserError, note
from ..progress import progress_bar
from .scores import ImportanceScores, module_fingerprint

__all__ = [
    "METHODS",
    "ImportanceAccumulator",
    "compute_importance",
    "checkpoint_importance",
    "expert_mlps",
]

log = logging.getLogger(__name__)

METHODS = ("minitron", "minitron-weighted")


def expert_mlps(model: torch.nn.Module) -> List[Any]:
    """The :class:`~olmo_flex_ext.nn.moe.VariableMoEMLP` of every layer, in layer order."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UserError("the model has no transformer blocks to score")
    out = []
    for i, block in enumerate(blocks.values()):
        moe = getattr(block, "feed_forward_moe", None)
        mlp = getattr(getattr(moe, "experts", None), "mlp", None)
        if mlp is None or not hasattr(mlp, "probe"):
            raise UserError(
                f"layer {i} has no variable-width MoE (olmo_flex_ext.nn.VariableMoE): importance "
                "scoring needs a FlexOlmo model built from olmo_flex_ext.models"
            )
        out.append(mlp)
    return out


class ImportanceAccumulator:
    """Sums of squared per-sequence mean activations for every (layer, expert, neuron).

    ``attach(model)`` registers the probe hooks; every forward pass over a ``(batch, seq_len)``
    input adds that batch's sequences. ``scores()`` gives ``sqrt`` of the sums.
    """

    def __init__(
        self,
        widths: Sequence[Sequence[int]],
        *,
        seq_len: int,
        method: str = "minitron",
        device: Union[str, torch.device] = "cpu",
    ):
        if method not in METHODS:
            raise UserError(
                f"unknown importance method {method!r}; use one of {', '.join(METHODS)}"
            )
        self.widths = [list(w) for w in widths]
        self.seq_len = seq_len
        self.method = method
        self.device = torch.device(device)
        self.sumsq = [
            [torch.zeros(w, dtype=torch.float64, device=self.device) for w in layer]
            for layer in self.widths
        ]
        n_experts = max(len(w) for w in self.widths)
        self.seqs = torch.zeros(
            len(self.widths), n_experts, dtype=torch.float64, device=self.device
        )
        self.tokens = torch.zeros_like(self.seqs)

    @contextlib.contextmanager
    def attach(self, model: torch.nn.Module) -> Iterator["ImportanceAccumulator"]:
        handles = [
            mlp.probe.register_forward_hook(self._hook(i))
            for i, mlp in enumerate(expert_mlps(model))
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, layer: int):
        def hook(module, args, output):
            del module, output
            act, routing = args
            self.add(layer, act, routing)

        return hook

    @torch.no_grad()
    def add(self, layer: int, act: torch.Tensor, routing: Any) -> None:
        """Add one expert's activations ``(n, width)`` for the tokens in ``routing``."""
        e = routing.expert
        a = act.float().abs()
        if self.method == "minitron-weighted":
            a = a * routing.weights.to(a.dtype).unsqueeze(-1)
        n_seqs = routing.batch_shape.numel() // self.seq_len
        if routing.tokens is None:  # every token of every sequence
            means = a.reshape(n_seqs, self.seq_len, a.shape[-1]).mean(dim=1)
            present = n_seqs
        else:
            seq = torch.div(routing.tokens, self.seq_len, rounding_mode="floor")
            # per-sequence sums as a (n_seqs, n) one-hot matmul: n_seqs is the batch size, and
            # matmul is far faster than index_add_ on CPU
            onehot = seq.unsqueeze(0) == torch.arange(n_seqs, device=seq.device).unsqueeze(1)
            sums = onehot.to(a.dtype) @ a
            counts = onehot.sum(dim=1)
            keep = counts > 0
            means = sums[keep] / counts[keep].unsqueeze(-1).to(sums.dtype)
            present = keep.sum()
        self.sumsq[layer][e] += means.double().square().sum(dim=0)
        self.seqs[layer, e] += present
        self.tokens[layer, e] += a.shape[0]

    def flat(self) -> torch.Tensor:
        """Everything as one float64 vector (for reductions and saving)."""
        return torch.cat(
            [s for layer in self.sumsq for s in layer]
            + [self.seqs.flatten(), self.tokens.flatten()]
        )

    def load_flat(self, flat: torch.Tensor) -> None:
        flat = flat.to(self.device, torch.float64)
        i = 0
        for layer in self.sumsq:
            for s in layer:
                s.copy_(flat[i : i + s.numel()])
                i += s.numel()
        n = self.seqs.numel()
        self.seqs.copy_(flat[i : i + n].view_as(self.seqs))
        self.tokens.copy_(flat[i + n : i + 2 * n].view_as(self.tokens))

    def scores(self) -> List[List[torch.Tensor]]:
        return [[s.sqrt().float().cpu() for s in layer] for layer in self.sumsq]


@dataclass
class _Progress:
    """Partial state saved while scoring (a rerun with the same inputs continues from it)."""

    identity: Dict[str, Any]
    done: int
    flat: torch.Tensor

    def save(self, path: Path) -> None:
        with atomic_file(path) as tmp:
            torch.save({"identity": self.identity, "done": self.done, "flat": self.flat.cpu()}, tmp)

    @classmethod
    def load(cls, path: Path, identity: Dict[str, Any]) -> Optional["_Progress"]:
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            done, flat = int(state["done"]), state["flat"]
            if not (isinstance(flat, torch.Tensor) and bool(torch.isfinite(flat).all())):
                raise ValueError("its sums are not finite")
        except Exception as e:  # a damaged file: torch and pickle raise many types
            note(
                f"ignoring the partial scores {path}, which are damaged ({type(e).__name__}: "
                f"{e}); scoring from the start"
            )
            return None
        if state.get("identity") != identity:
            note(
                f"ignoring the partial scores {path}: they belong to another scoring run "
                "(model, data or settings)"
            )
            return None
        return cls(identity, done, flat)


def compute_importance(
    model: torch.nn.Module,
    data: TokenFiles,
    *,
    seq_len: int,
    num_seqs: int,
    method: str = "minitron",
    batch_size: int = 1,
    state_path: Optional[Union[str, Path]] = None,
    save_every: int = 64,
    source: str = "",
    progress: bool = True,
) -> ImportanceScores:
    """Score every neuron of every expert of ``model`` on ``num_seqs`` windows of ``seq_len``
    tokens spread over ``data``.

    Under a process group each rank scores its share of the sequences and the sums are added
    across ranks; every rank returns the same scores. With ``state_path``, partial sums are saved
    there (atomically) about every ``save_every`` sequences, a rerun with the same model, data and
    settings continues from them (at any world size), and the file is removed when done.
    """
    rank, world = get_rank(), get_world_size()
    windows = data.sample_windows(seq_len, num_seqs)
    mlps = expert_mlps(model)
    device = next(model.parameters()).device
    acc_widths = [list(m.expert_widths) for m in mlps]
    calibration = {
        "paths": list(data.paths),
        "files": data.fingerprint(),
        "dtype": data.dtype.name,
        "seq_len": seq_len,
        "num_seqs": num_seqs,
    }
    fingerprint = module_fingerprint(model)
    identity = {"model": fingerprint, "calibration": calibration, "method": method}
    total = ImportanceAccumulator(acc_widths, seq_len=seq_len, method=method, device=device)
    delta = ImportanceAccumulator(acc_widths, seq_len=seq_len, method=method, device=device)
    done = 0
    state_file = Path(state_path) if state_path is not None else None
    if state_file is not None and (resumed := _Progress.load(state_file, identity)) is not None:
        done = resumed.done
        total.load_flat(resumed.flat)
        log.info("Resuming importance from %s: %d of %d sequences done", state_file, done, num_seqs)

    per_round = world * batch_size
    sync_rounds = max(1, save_every // per_round)
    bar = progress_bar(
        "importance", num_seqs, completed=done, unit="sequences", enabled=progress and rank == 0
    )
    with bar as advance, delta.attach(model), torch.inference_mode():
        rounds = 0
        while done < num_seqs:
            mine = windows[done + rank * batch_size : min(done + (rank + 1) * batch_size, num_seqs)]
            if mine:
                model(_batch(data, mine, device))
            advance(min(done + per_round, num_seqs) - done)
            done = min(done + per_round, num_seqs)
            rounds += 1
            if rounds % sync_rounds == 0 or done >= num_seqs:
                _sync(delta, total, world)
                if state_file is not None and rank == 0 and done < num_seqs:
                    _Progress(identity, done, total.flat()).save(state_file)
    if state_file is not None and rank == 0:
        state_file.unlink(missing_ok=True)

    metadata = {
        "method": method,
        "calibration": json.dumps(calibration),
        "tokens": str(num_seqs * seq_len),
        "sequences": str(num_seqs),
        "routed_tokens": json.dumps(total.tokens.long().tolist()),
        "sequences_per_expert": json.dumps(total.seqs.long().tolist()),
        "expert_widths": json.dumps(acc_widths),
        "d_model": str(mlps[0].d_model),
        "model_fingerprint": fingerprint,
        "source": source,
    }
    return ImportanceScores(total.scores(), metadata)


def checkpoint_importance(
    checkpoint: Union[str, Path],
    data: Sequence[str],
    *,
    seq_len: int,
    num_seqs: int,
    method: str = "minitron",
    batch_size: int = 1,
    token_dtype: Optional[str] = None,
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
    state_path: Optional[Union[str, Path]] = None,
    save_every: int = 64,
    progress: bool = True,
) -> ImportanceScores:
    """:func:`compute_importance` of a checkpoint's experts on calibration token files (globs):
    what ``olmo-flex importance``, the pruning callback and the demo run.

    The token files are checked against the model's vocabulary (``token_dtype``: ``uint16`` /
    ``uint32``, default from the vocabulary size) and for enough data before the model is loaded
    (on ``device`` in ``dtype``, default CPU float32)."""
    from ..checkpoint import load_model, read_model_config, resolve_checkpoint
    from ..data.tokens import token_dtype as dtype_for_vocab

    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    ckpt = resolve_checkpoint(checkpoint)
    vocab = read_model_config(ckpt).vocab_size
    files = TokenFiles(data, dtype_for_vocab(vocab, token_dtype), vocab_size=vocab)
    files.check_vocab()
    files.sample_windows(seq_len, num_seqs)  # refuses too little data before any work
    model = load_model(ckpt, device=device, dtype=dtype)
    return compute_importance(
        model,
        files,
        seq_len=seq_len,
        num_seqs=num_seqs,
        method=method,
        batch_size=batch_size,
        state_path=state_path,
        save_every=save_every,
        source=str(ckpt),
        progress=progress,
    )


def _batch(data: TokenFiles, windows: Sequence[Window], device: torch.device) -> torch.Tensor:
    rows = np.stack([data.read(w).astype(np.int64) for w in windows])
    return torch.from_numpy(rows).to(device)


def _sync(delta: ImportanceAccumulator, total: ImportanceAccumulator, world: int) -> None:
    flat = delta.flat()
    if world > 1:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    total.load_flat(total.flat() + flat)
    delta.load_flat(torch.zeros_like(flat))
