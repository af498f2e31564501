"""Teacher top-k generation: the teacher's k most likely next tokens at every token position.

:func:`teacher_topk` is the one computation (used by store generation and the online teacher);
:func:`generate_store` runs it over token files and writes a :class:`TopKStore`:

- windows are :meth:`TokenFiles.windows` with ``partial=True`` (FSL windows plus each file's
  shorter tail), grouped into fixed chunks of ``windows_per_chunk`` windows; chunk ``c`` goes to
  rank ``c % world_size``, so any number of ranks (torchrun) or one CPU produce the same bytes;
- each chunk is written to ``.STORE.partial/`` as one file, atomically (temp name + rename),
  followed by its SHA-256 (``chunk-*.sha256``), so an interrupted run resumes with the finished
  chunks and recomputes the rest, never duplicating or skipping an entry; a chunk whose size or
  hash is wrong (or whose hash is missing) is recomputed with a note; ``plan.json`` there refuses
  a resume with different settings (``overwrite`` starts over instead);
- rows are checked before they are written (the teacher's log-probs finite), so a store's rows are
  valid when its chunks match their hashes; :class:`TopKStore` checks rows again as it reads;
- when every chunk exists, rank 0 writes ``meta.json`` (with the chunk hashes) and renames the
  directory to ``STORE``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
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
    tensor_meta,
    weights_dir,
)
from ..data.tokens import TokenFiles, Window, sampled_sha256, token_dtype
from ..errors import note
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


def _digest_file(chunk: Path) -> Path:
    return chunk.with_suffix(".sha256")


def _chunk_done(work: Path, c: int, tokens: int, codec: TopKCodec) -> bool:
    """Whether chunk ``c`` is complete: the right size and the SHA-256 written after it. A
    damaged one is removed (with a note) so that it is computed again."""
    from ..safe_io import sha256_file

    chunk = work / _chunk_name(c)
    digest = _digest_file(chunk)
    if not chunk.exists():
        digest.unlink(missing_ok=True)
        return False
    size = chunk.stat().st_size
    expected = digest.read_text().strip() if digest.is_file() else None
    if size == tokens * codec.row_bytes and expected and sha256_file(chunk) == expected:
        return True
    why = (
        "has the wrong size"
        if size != tokens * codec.row_bytes
        else ("has no recorded hash" if not expected else "does not match its recorded hash")
    )
    note(f"{chunk} {why}: computing it again")
    chunk.unlink(missing_ok=True)
    digest.unlink(missing_ok=True)
    return False


def _all_true(flag: bool) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return int(t.item()) == 0


def _write_atomic(path: Path, data: Union[bytes, np.ndarray]) -> None:
    write_atomic(
        path, np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data, fsync=True
    )


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
    tensor_meta(teacher)  # the teacher's metadata and files are sound before anything is written
    vocab = config.vocab_size
    if not 1 <= k <= vocab:
        raise TopKStoreError(f"--top-k must be between 1 and the vocabulary size {vocab}, got {k}")
    if tokenizer.padded_vocab_size() != vocab and tokenizer.vocab_size != vocab:
        raise TopKStoreError(
            f"tokenizer {tokenizer.identifier or '(unnamed)'} has {tokenizer.vocab_size} tokens "
            f"(padded {tokenizer.padded_vocab_size()}) but the teacher's vocabulary is {vocab}; "
            "pass the teacher's tokenizer with --tokenizer"
        )
    files = TokenFiles(data, token_dtype(vocab, dtype), vocab_size=vocab)
    files.check_vocab()
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
    fresh = not work.exists()
    _start_or_resume(work, plan, rank, overwrite)
    try:
        todo = [
            c for c in range(rank, len(chunks), world)
            if not _chunk_done(work, c, sum(w.length for w in chunks[c]), codec)
        ]  # fmt: skip
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
            bar = progress_bar(
                label, total, completed=done, unit="tokens", enabled=progress and rank == 0
            )
            with bar as advance:
                _run_chunks(model, files, chunks, todo, codec, work, batch_size, device, advance)
    except TopKStoreError:
        # Bad input found while computing: a folder this call started that holds no finished
        # chunk would only be a leftover.
        if fresh and rank == 0 and not any(work.glob("chunk-*")):
            shutil.rmtree(work, ignore_errors=True)
        raise
    finished = _all_true(not stopped)
    if not finished:
        return None
    if rank == 0:
        _finalise(work, out, plan, chunks, codec, overwrite)
    barrier()
    return TopKStore(out)


def _start_or_resume(work: Path, plan: Dict[str, Any], rank: int, overwrite: bool = False) -> None:
    plan_file = work / PLAN_FILE
    error = None
    if rank == 0:
        old = _read_plan(plan_file) if work.exists() else None
        if work.exists() and old != plan:
            keys = sorted(
                k for k in set(old or {}) | set(plan) if (old or {}).get(k) != plan.get(k)
            )
            if old is not None and not overwrite:
                error = (
                    f"{work} holds an unfinished store made with other settings "
                    f"({', '.join(keys)}); rerun with the same arguments to resume it, or pass "
                    "--overwrite to discard it and start over"
                )
            else:
                why = "its plan.json is missing or damaged" if old is None else "--overwrite"
                note(f"discarding the unfinished store in {work} ({why})")
                shutil.rmtree(work)
        if error is None:
            work.mkdir(parents=True, exist_ok=True)
            if not plan_file.exists():
                _write_atomic(plan_file, json.dumps(plan, indent=2).encode())
            else:
                log.info("Resuming the unfinished store in %s", work)
    error = _broadcast(error)
    if error is not None:
        raise TopKStoreError(error)
    barrier()


def _read_plan(plan_file: Path) -> Optional[Dict[str, Any]]:
    try:
        plan = json.loads(plan_file.read_text())
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def _broadcast(obj: Any) -> Any:
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    from olmo_core.distributed.utils import broadcast_object

    return broadcast_object(obj)


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
                _check_teacher(files, batch, lps_np)
                for i, w in enumerate(batch):
                    lo = w.offset - start
                    pending.append(pool.submit(_encode_into, codec, rows, lo, ids_np[i], lps_np[i]))
                advance(sum(w.length for w in batch))
            pending.append(pool.submit(_write_chunk, work / _chunk_name(c), rows))
        for f in pending:
            f.result()


def _check_teacher(files: TokenFiles, batch: List[Window], lps: np.ndarray) -> None:
    """Refuse to store log-probs that are NaN or +inf (a teacher in bfloat16 can overflow)."""
    bad = (np.isnan(lps) | np.isposinf(lps)).any(axis=-1)
    if bad.any():
        i, t = (int(x[0]) for x in np.nonzero(bad))
        w = batch[i]
        raise TopKStoreError(
            f"the teacher computed NaN log-probs at token {w.start + t:,d} of "
            f"{files.paths[w.file]}; nothing was stored for it. Check the teacher checkpoint "
            "(olmo-flex info --verify), or use --teacher-dtype float32"
        )


def _write_chunk(path: Path, rows: np.ndarray) -> None:
    """The chunk, then its SHA-256 (a chunk without one is not finished)."""
    rows = np.ascontiguousarray(rows)
    _write_atomic(path, rows)
    _write_atomic(_digest_file(path), hashlib.sha256(rows.data).hexdigest().encode())


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
        digest = _digest_file(f)
        if not f.is_file() or f.stat().st_size != tokens * codec.row_bytes or not digest.is_file():
            raise TopKStoreError(f"chunk {f} is missing or has the wrong size; rerun to resume")
        entries.append({
            "file": f.name, "start": windows[0].offset, "tokens": tokens,
            "sha256": digest.read_text().strip(),
        })  # fmt: skip
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
        "generation": {k: plan[k] for k in ("windows_per_chunk", "batch_size", "teacher_dtype")}
        | {"olmo_flex_ext": __version__},
    }
    if out.exists() and not overwrite:
        raise TopKStoreError(f"{out} already exists; pass --overwrite to replace it")
    for leftover in work.glob(".*.tmp*"):  # half-written files of an interrupted run
        leftover.unlink()
    _write_atomic(work / META_FILE, json.dumps(meta, indent=2).encode())
    (work / PLAN_FILE).unlink()
    for digest in work.glob("chunk-*.sha256"):  # recorded in meta.json now
        digest.unlink()
    move_into_place(work, out, overwrite=overwrite)
