"""Teacher top-k generation: the teacher's k most likely next tokens at every token position.

:func:`teacher_topk` is the one computation (used by store generation and the online teacher);
:func:`generate_store` runs it over token files and writes a :class:`TopKStore`:

- windows are :meth:`TokenFiles.windows` with ``partial=True`` (FSL windows plus each file's
  shorter tail), grouped into fixed chunks of ``windows_per_chunk`` windows; chunk ``c`` goes to
  rank ``c % world_size``, so any number of ranks (torchrun) or one CPU produce the same bytes;
- each chunk is written to ``.STORE.partial/`` as one file, atomically (temp name + rename), so an
  interrupted run resumes with the finished chunks and recomputes the rest, never duplicating or
  skipping an entry; ``plan.json`` there refuses a resume with different settings;
- when every chunk exists, rank 0 writes ``meta.json`` and renames the directory to ``STORE``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from olmo_core.data import TokenizerConfig
from olmo_core.distributed.utils import barrier, get_rank, get_world_size
from olmo_core.nn.transformer import Transformer

from .. import __version__
from ..atomic import move_into_place, write_atomic
from ..checkpoint import (
    CONFIG_FILE,
    load_model,
    read_model_config,
    resolve_checkpoint,
    weights_dir,
)
from ..data.tokens import TokenFiles, Window, sampled_sha256, token_dtype
from ..progress import progress_bar
from .codec import TopKCodec
from .loss import default_chunk_tokens
from .topk_store import (
    META_FILE,
    STORE_FORMAT,
    STORE_VERSION,
    TopKStore,
    TopKStoreError,
    tokenizer_identity,
)

__all__ = [
    "teacher_topk",
    "teacher_identity",
    "generate_store",
    "partial_dir",
    "default_windows_per_chunk",
]

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"


# ---- the teacher ----------------------------------------------------------------------------


def teacher_identity(path: Union[str, Path]) -> Dict[str, Any]:
    """Path plus fingerprints of a checkpoint's config and weight files (sampled sha256)."""
    ckpt = resolve_checkpoint(path)
    wdir = weights_dir(ckpt)
    h = hashlib.sha256()
    for f in sorted(p for p in wdir.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(wdir)}:{sampled_sha256(str(f))}".encode())
    config = json.loads((ckpt / CONFIG_FILE).read_text()).get("model", {})
    return {
        "path": str(ckpt.resolve()),
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "weights_sha256": h.hexdigest(),
    }


@torch.no_grad()
def teacher_topk(
    model: Transformer,
    input_ids: torch.Tensor,
    k: int,
    *,
    chunk_tokens: Optional[int] = None,
    **model_kwargs: Any,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` next-token predictions at every position of ``input_ids`` (B, L): ids int64
    (B, L, k) in ascending id order and their log-probs float32 (B, L, k), normalised over the
    full vocabulary. The float32 log-softmax runs over ``chunk_tokens`` positions at a time."""
    logits = model(input_ids, **model_kwargs)
    B, L, V = logits.shape
    chunk_tokens = chunk_tokens or default_chunk_tokens(logits.device)
    flat = logits.view(B * L, V)
    ids = torch.empty(B * L, k, dtype=torch.long, device=logits.device)
    lps = torch.empty(B * L, k, dtype=torch.float32, device=logits.device)
    for s in range(0, B * L, chunk_tokens):
        lp = F.log_softmax(flat[s : s + chunk_tokens].float(), dim=-1)
        values, indices = torch.topk(lp, k, dim=-1, sorted=False)
        indices, order = torch.sort(indices, dim=-1)
        ids[s : s + chunk_tokens] = indices
        lps[s : s + chunk_tokens] = values.gather(1, order)
    return ids.view(B, L, k), lps.view(B, L, k)


# ---- planning -------------------------------------------------------------------------------


def partial_dir(out: Union[str, Path]) -> Path:
    """Where an unfinished store lives while it is generated."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def default_windows_per_chunk(seq_len: int) -> int:
    """About 256k tokens per chunk file (about 110 MB at k = 128)."""
    return max(1, (1 << 18) // seq_len)


def _chunk_batches(windows: Sequence[Window], batch_size: int) -> List[List[Window]]:
    """Consecutive windows of equal length, at most ``batch_size`` per batch."""
    batches: List[List[Window]] = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and batches[-1][0].length == w.length:
            batches[-1].append(w)
        else:
            batches.append([w])
    return batches


def _chunk_name(c: int) -> str:
    return f"chunk-{c:06d}.bin"


def _all_true(flag: bool) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return int(t.item()) == 0


def _write_atomic(path: Path, data: Union[bytes, np.ndarray]) -> None:
    write_atomic(path, np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data, fsync=True)


# ---- generation -----------------------------------------------------------------------------


def generate_store(
    teacher: Union[str, Path],
    data: Union[str, Sequence[str]],
    *,
    seq_len: int,
    k: int,
    out: Union[str, Path],
    tokenizer: TokenizerConfig,
    dtype: Optional[str] = None,
    batch_size: int = 4,
    windows_per_chunk: Optional[int] = None,
    device: Optional[torch.device] = None,
    teacher_dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    max_chunks: Optional[int] = None,
    progress: bool = True,
) -> Optional[TopKStore]:
    """Write the teacher's top-``k`` store for token files ``data`` to ``out``; every rank of a
    process group calls this. Returns the finished store, or ``None`` when this call stopped
    after ``max_chunks`` new chunks per rank (a later call resumes)."""
    out = Path(out)
    rank, world = get_rank(), get_world_size()
    if out.exists() and not overwrite:
        raise TopKStoreError(f"{out} already exists; choose another --out or pass --overwrite")
    config = read_model_config(teacher)
    vocab = config.vocab_size
    if not 1 <= k <= vocab:
        raise TopKStoreError(f"--top-k must be between 1 and the vocabulary size {vocab}, got {k}")
    if tokenizer.padded_vocab_size() != vocab and tokenizer.vocab_size != vocab:
        raise TopKStoreError(
            f"tokenizer {tokenizer.identifier or '(unnamed)'} has {tokenizer.vocab_size} tokens "
            f"(padded {tokenizer.padded_vocab_size()}) but the teacher's vocabulary is {vocab}; "
            "pass the teacher's tokenizer with --tokenizer"
        )
    files = TokenFiles(data, token_dtype(vocab, dtype))
    windows = files.windows(seq_len, partial=True)
    wpc = windows_per_chunk or default_windows_per_chunk(seq_len)
    chunks = [windows[i : i + wpc] for i in range(0, len(windows), wpc)]
    codec = TopKCodec(vocab, k)
    plan = {
        "teacher": teacher_identity(teacher),
        "vocab_size": vocab,
        "k": k,
        "sequence_length": seq_len,
        "tokenizer": tokenizer_identity(tokenizer),
        "token_dtype": files.dtype.name,
        "token_files": files.fingerprint(),
        "windows_per_chunk": wpc,
        "batch_size": batch_size,
        "teacher_dtype": str(teacher_dtype).replace("torch.", ""),
        "encoding": codec.describe(),
    }
    work = partial_dir(out)
    _start_or_resume(work, plan, rank)

    todo = [c for c in range(rank, len(chunks), world) if not (work / _chunk_name(c)).exists()]
    stopped = max_chunks is not None and len(todo) > max_chunks
    todo = todo[:max_chunks] if max_chunks is not None else todo
    # Loading a checkpoint is collective under a process group: all ranks load if any has work.
    if not _all_true(not todo):
        device = device or torch.device("cpu")
        model = load_model(teacher, device=device, dtype=teacher_dtype)
        mine = [c for c in range(rank, len(chunks), world)]
        total = sum(w.length for c in mine for w in chunks[c])
        done = total - sum(w.length for c in todo for w in chunks[c])
        label = "teacher top-k" + (f" (rank 0 of {world})" if world > 1 else "")
        bar = progress_bar(label, total, completed=done, unit="tokens", enabled=progress and rank == 0)
        with bar as advance:
            _run_chunks(model, files, chunks, todo, codec, work, batch_size, device, advance)
    finished = _all_true(not stopped)
    if not finished:
        return None
    if rank == 0:
        _finalise(work, out, plan, chunks, codec, overwrite)
    barrier()
    return TopKStore(out)


def _start_or_resume(work: Path, plan: Dict[str, Any], rank: int) -> None:
    plan_file = work / PLAN_FILE
    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        if plan_file.exists():
            old = json.loads(plan_file.read_text())
            if old != plan:
                keys = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
                raise TopKStoreError(
                    f"{work} holds an unfinished store made with other settings ({', '.join(keys)}); "
                    "rerun with the same arguments to resume it, or delete it to start over"
                )
            log.info("Resuming the unfinished store in %s", work)
        else:
            _write_atomic(plan_file, json.dumps(plan, indent=2).encode())
    barrier()


def _run_chunks(
    model: Transformer,
    files: TokenFiles,
    chunks: List[List[Window]],
    todo: List[int],
    codec: TopKCodec,
    work: Path,
    batch_size: int,
    device: torch.device,
    advance,
) -> None:
    # Encoding and writing run on a background thread (numpy releases the GIL) while the
    # teacher computes the next batch; at most two chunks are in memory.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: List[Future] = []
        for c in todo:
            windows = chunks[c]
            start = windows[0].offset
            rows = np.empty((sum(w.length for w in windows), codec.row_bytes), dtype=np.uint8)
            while len(pending) > 1:
                pending.pop(0).result()
            for batch in _chunk_batches(windows, batch_size):
                input_ids = torch.from_numpy(
                    np.stack([files.read(w).astype(np.int64) for w in batch])
                ).to(device)
                ids, lps = teacher_topk(model, input_ids, codec.k)
                ids_np, lps_np = ids.cpu().numpy(), lps.cpu().numpy()
                for i, w in enumerate(batch):
                    lo = w.offset - start
                    pending.append(
                        pool.submit(_encode_into, codec, rows, lo, ids_np[i], lps_np[i])
                    )
                advance(sum(w.length for w in batch))
            pending.append(pool.submit(_write_atomic, work / _chunk_name(c), rows))
        for f in pending:
            f.result()


def _encode_into(codec: TopKCodec, rows: np.ndarray, lo: int, ids, lps) -> None:
    rows[lo : lo + ids.shape[0]] = codec.encode(ids, lps)


def _finalise(
    work: Path,
    out: Path,
    plan: Dict[str, Any],
    chunks: List[List[Window]],
    codec: TopKCodec,
    overwrite: bool,
) -> None:
    entries = []
    for c, windows in enumerate(chunks):
        tokens = sum(w.length for w in windows)
        f = work / _chunk_name(c)
        if not f.is_file() or f.stat().st_size != tokens * codec.row_bytes:
            raise TopKStoreError(f"chunk {f} is missing or has the wrong size; rerun to resume")
        entries.append({"file": f.name, "start": windows[0].offset, "tokens": tokens})
    meta = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "vocab_size": plan["vocab_size"],
        "k": plan["k"],
        "sequence_length": plan["sequence_length"],
        "num_tokens": sum(e["tokens"] for e in entries),
        "tokenizer": plan["tokenizer"],
        "token_dtype": plan["token_dtype"],
        "token_files": plan["token_files"],
        "tail": "each file's last partial window is computed as one shorter window",
        "encoding": plan["encoding"],
        "chunks": entries,
        "teacher": plan["teacher"],
        "generation": {
            k: plan[k] for k in ("windows_per_chunk", "batch_size", "teacher_dtype")
        } | {"olmo_flex_ext": __version__},
    }
    for leftover in work.glob(".*.tmp*"):  # half-written files of an interrupted run
        leftover.unlink()
    _write_atomic(work / META_FILE, json.dumps(meta, indent=2).encode())
    (work / PLAN_FILE).unlink()
    if out.exists() and not overwrite:
        raise TopKStoreError(f"{out} already exists; pass --overwrite to replace it")
    move_into_place(work, out)
