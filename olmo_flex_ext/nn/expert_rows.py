"""One checkpoint layout for expert weights kept as several row blocks.

In expert-only training the rows of the frozen experts and the rows of the trained experts are
separate parameters (see :meth:`VariableMoEMLP.set_trainable_experts
<olmo_flex_ext.nn.moe.VariableMoEMLP.set_trainable_experts>`), yet every state dict and checkpoint
shows one ``(sum of widths, d_model)`` tensor per weight, expert 0's rows first. This module
converts between the two:

- :func:`fuse_rows` joins the blocks into the fused tensor. Plain tensors are concatenated. FSDP2
  parameters (DTensors sharded on dim 0) become a ``ShardedTensor`` whose local shards are views of
  this rank's rows of each block, placed at their offsets in the fused tensor. Nothing is copied or
  communicated, and torch DCP writes each piece as a chunk of the fused tensor (the same file layout
  as a fused parameter, readable at any world size) and loads the pieces in place.
- :func:`split_rows` cuts a fused value back into the blocks: the pieces of such a
  ``ShardedTensor`` are copied into place (a no-op when DCP already loaded into the views), a plain
  tensor is sliced (and sharded like the block without communication), a fused DTensor is gathered.

A block's rows are listed as ranges of the fused tensor (:data:`RowRanges`), so blocks need not be
contiguous there (e.g. the frozen experts 0 and 2 around a trained expert 1).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

__all__ = ["RowRanges", "fuse_rows", "split_rows", "local_row_span"]

RowRanges = List[Tuple[int, int]]
"""``[start, stop)`` ranges of the fused tensor's rows, in the order a block holds them."""


def _pieces(ranges: RowRanges, start: int, stop: int):
    """``(fused_start, block_row, length)`` for block rows ``[start, stop)``."""
    row = 0
    for a, b in ranges:
        lo, hi = max(start, row), min(stop, row + b - a)
        if lo < hi:
            yield a + lo - row, lo, hi - lo
        row += b - a


def fuse_rows(
    blocks: Sequence[torch.Tensor], ranges: Sequence[RowRanges], total: int
) -> torch.Tensor:
    """The fused ``(total, ...)`` tensor whose rows ``ranges[i]`` are ``blocks[i]`` (see module
    docstring: a plain tensor for plain blocks, a ``ShardedTensor`` of views for FSDP2 blocks)."""
    if any(isinstance(b, DTensor) for b in blocks):
        return _sharded_view(blocks, ranges, total)
    pieces = sorted(
        (fused, blocks[i][row : row + n])
        for i, r in enumerate(ranges)
        for fused, row, n in _pieces(r, 0, blocks[i].shape[0])
    )
    return torch.cat([p for _, p in pieces]) if len(pieces) > 1 else pieces[0][1]


def split_rows(
    fused: torch.Tensor, blocks: Sequence[torch.Tensor], ranges: Sequence[RowRanges]
) -> List[torch.Tensor]:
    """Values for ``blocks`` (same kind: plain or DTensor) cut from a fused value (plain tensor,
    DTensor, or a ``ShardedTensor`` made by :func:`fuse_rows`, whose pieces are copied into the
    blocks in place, which then are their own values)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(fused, ShardedTensor):
        _copy_pieces(fused, blocks, ranges)
        return list(blocks)
    if isinstance(fused, DTensor):
        fused = fused.full_tensor()
    out = []
    for block, r in zip(blocks, ranges):
        value = torch.cat([fused[a:b] for a, b in r]) if len(r) > 1 else fused[r[0][0] : r[0][1]]
        if isinstance(block, DTensor):
            value = distribute_tensor(
                value.to(block.device), block.device_mesh, block.placements, src_data_rank=None
            )
        out.append(value)
    return out


def local_row_span(rows: int, parts: int, index: int) -> Tuple[int, int]:
    """``[start, stop)`` of the rows that part ``index`` of ``parts`` holds when ``rows`` rows are
    sharded on dim 0 like DTensor ``Shard(0)`` / FSDP2 (``torch.chunk``: equal chunks of
    ``ceil(rows / parts)``, the last ones shorter or empty)."""
    size = math.ceil(rows / parts)
    start = min(rows, index * size)
    return start, min(rows, start + size)


def _shard_dim(block: DTensor) -> int:
    """The mesh dimension ``block`` is sharded over (dim 0; other mesh dims replicate it)."""
    shard = [i for i, p in enumerate(block.placements) if p == Shard(0)]
    rest = [p for i, p in enumerate(block.placements) if i not in shard]
    if len(shard) != 1 or any(not isinstance(p, Replicate) for p in rest):
        raise NotImplementedError(
            f"expert rows sharded as {block.placements}: only dim-0 sharding (FSDP, HSDP) is "
            "supported for experts split into trained and frozen rows"
        )
    return shard[0]


def _sharded_view(blocks: Sequence[torch.Tensor], ranges: Sequence[RowRanges], total: int):
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import (
        Shard as LocalShard,
    )
    from torch.distributed._shard.sharded_tensor import (
        ShardedTensor,
        ShardedTensorMetadata,
        TensorProperties,
    )

    first = blocks[0]
    assert isinstance(first, DTensor)
    mesh, placements = first.device_mesh, first.placements
    if any(not isinstance(b, DTensor) or b.device_mesh != mesh or b.placements != placements
           for b in blocks):  # fmt: skip
        raise NotImplementedError("expert row blocks must be sharded alike")
    dim = _shard_dim(first)
    group = mesh.get_group(dim)
    ranks = dist.get_process_group_ranks(group)
    me = mesh.get_local_rank(dim)
    cols = list(first.shape[1:])
    device = first.to_local().device
    all_md, local = [], []
    for index, rank in enumerate(ranks):
        for block, r in zip(blocks, ranges):
            start, stop = local_row_span(block.shape[0], len(ranks), index)
            for fused, row, n in _pieces(r, start, stop):
                md = ShardMetadata(
                    shard_offsets=[fused] + [0] * len(cols),
                    shard_sizes=[n] + cols,
                    placement=f"rank:{rank}/{device}",
                )
                all_md.append(md)
                if index == me:
                    rows = block.to_local()
                    assert rows.shape[0] == stop - start, "FSDP2 sharding changed its chunking"
                    local.append(LocalShard(rows[row - start : row - start + n], md))
    props = TensorProperties(dtype=first.dtype, layout=torch.strided, requires_grad=False)
    meta = ShardedTensorMetadata(all_md, torch.Size([total] + cols), props)
    return ShardedTensor._init_from_local_shards_and_global_metadata(
        local, meta, process_group=group
    )


def _copy_pieces(fused, blocks: Sequence[torch.Tensor], ranges: Sequence[RowRanges]) -> None:
    """Copy the local shards of a fused ``ShardedTensor`` laid out by :func:`fuse_rows` for these
    ``blocks`` into the blocks' local rows."""
    dims = [_shard_dim(b) for b in blocks if isinstance(b, DTensor)]
    if len(dims) != len(blocks):
        raise NotImplementedError("a sharded fused value needs FSDP-sharded expert rows")
    mesh = blocks[0].device_mesh  # type: ignore[attr-defined]
    parts, me = mesh.size(dims[0]), mesh.get_local_rank(dims[0])
    where = {}
    for block, r in zip(blocks, ranges):
        start, stop = local_row_span(block.shape[0], parts, me)
        for fused_row, row, n in _pieces(r, start, stop):
            where[fused_row] = (block.to_local(), row - start, n)  # type: ignore[attr-defined]
    shards = fused.local_shards()
    if sorted(s.metadata.shard_offsets[0] for s in shards) != sorted(where):
        raise RuntimeError("a sharded expert weight does not match this model's sharding")
    with torch.no_grad():
        for s in shards:
            rows, at, n = where[s.metadata.shard_offsets[0]]
            rows[at : at + n].copy_(s.tensor)  # the same memory when DCP loaded in place
