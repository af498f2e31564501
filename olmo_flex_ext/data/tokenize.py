"""Tokenizing JSONL documents into OLMo-core token files with any Hugging Face tokenizer.

``olmo-flex tokenize 'data/*.jsonl.zst' --tokenizer DIR --out OUT`` reads ``.jsonl``, ``.jsonl.gz``
and ``.jsonl.zst`` files (one JSON object per line, the text under ``--field``), encodes every
document with the tokenizer in ``DIR/tokenizer.json`` (the dolma2 tokenizer, or the demo's), appends
EOS (and prepends BOS with ``--bos``), and writes one flat token file per input (uint16 when the
vocabulary fits, else uint32) as OLMo-core's numpy datasets read them.

Work is split into chunks of documents encoded by a pool of worker processes (ordered, so the
output does not depend on the number of workers). Each token file is written to a temp name and
renamed when complete, then recorded in ``OUT/.progress.json``; an interrupted run started again
skips the files already done. ``OUT/meta.json``, written last, records what the data was made from
(inputs with sizes, tokenizer hash, special ids, field, dtype, counts): its presence means done.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import atomic_file, move_into_place, write_atomic
from ..errors import UserError
from .tokens import expand_paths, token_dtype

__all__ = [
    "SpecialIds",
    "load_tokenizer",
    "special_token_id",
    "open_jsonl",
    "tokenize_jsonl",
    "expand_jsonl_inputs",
    "TOKEN_SUFFIX",
]

TOKEN_SUFFIX = ".npy"
"""OLMo-core's name for its (headerless) token files."""

_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".json")


@dataclass(frozen=True)
class SpecialIds:
    """Ids added around each document: EOS after (always), BOS before (if set)."""

    eos: int
    bos: Optional[int] = None


def _special_from_config(directory: Path, key: str) -> Optional[str]:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = directory / name
        if f.is_file():
            config = json.loads(f.read_text())
            value = config.get(key) if isinstance(config, dict) else None
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return value
    return None


def special_token_id(tok: Any, directory: Path, key: str) -> Optional[int]:
    """The id of the special token ``key`` (``eos_token``, ``bos_token``, ``pad_token``) named in
    the tokenizer directory's config files, or ``None``."""
    try:
        name = _special_from_config(directory, key)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the tokenizer config in {directory} ({e})") from None
    return None if name is None else tok.token_to_id(name)


def load_tokenizer(
    directory: Union[str, Path], *, eos_id: Optional[int] = None, bos: bool = False
) -> Tuple[Any, SpecialIds]:
    """A ``tokenizers.Tokenizer`` from an HF tokenizer directory and the ids to add around
    documents (EOS from ``tokenizer_config.json`` / ``special_tokens_map.json`` unless given)."""
    from tokenizers import Tokenizer

    d = Path(directory)
    file = d / "tokenizer.json" if d.is_dir() else d
    if not file.is_file():
        raise UserError(
            f"{d} is not a tokenizer directory: it has no tokenizer.json (a Hugging Face fast "
            "tokenizer, e.g. the dolma2 tokenizer saved with save_pretrained)"
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise UserError(f"{file} is not a readable tokenizer ({e})") from None

    def token_id(key: str) -> Optional[int]:
        return special_token_id(tok, file.parent, key)

    eos = eos_id if eos_id is not None else token_id("eos_token")
    if eos is None:
        raise UserError(
            f"cannot tell the EOS token of {d}: its tokenizer_config.json names no eos_token in "
            "the vocabulary; pass --eos-id"
        )
    bos_id = token_id("bos_token") if bos else None
    if bos and bos_id is None:
        raise UserError(f"--bos given but {d} names no bos_token in its tokenizer_config.json")
    return tok, SpecialIds(eos=eos, bos=bos_id)


class _CountingReader(io.RawIOBase):
    """Wraps a binary file to count the (compressed) bytes consumed, for progress."""

    def __init__(self, f: IO[bytes]):
        self.f, self.count = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)  # type: ignore[attr-defined]
        self.count += n or 0
        return n or 0

    def close(self) -> None:
        self.f.close()
        super().close()


def open_jsonl(path: Union[str, Path]) -> Tuple[IO[str], _CountingReader]:
    """A text stream over a ``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst`` file, and the raw reader
    whose ``count`` is the number of file bytes read so far."""
    raw = _CountingReader(open(path, "rb"))
    name = str(path)
    stream: IO[bytes]
    if name.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=io.BufferedReader(raw))  # type: ignore[assignment]
    elif name.endswith(".zst"):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(raw))
    else:
        stream = io.BufferedReader(raw)
    return io.TextIOWrapper(stream, encoding="utf-8"), raw


def _parse(path: str, lineno: int, line: str, field: str) -> Optional[str]:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, str):
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise UserError(
            f"{path}:{lineno} has no string field {field!r} (found: {found}); "
            "choose the text field with --field"
        )
    return value


@dataclass
class _Chunk:
    path: str
    first_line: int
    lines: List[str]
    bytes_read: int


def _chunks(path: str, docs_per_chunk: int) -> Iterator[_Chunk]:
    """Raw lines in chunks (parsing happens in the workers), with the file bytes read so far."""
    text, raw = open_jsonl(path)
    with text:
        lines: List[str] = []
        first = 1
        for lineno, line in enumerate(text, 1):
            lines.append(line)
            if len(lines) >= docs_per_chunk:
                yield _Chunk(path, first, lines, raw.count)
                lines, first = [], lineno + 1
        if lines:
            yield _Chunk(path, first, lines, raw.count)


# Worker state: set once per process by _init_worker (or directly for in-process runs).
_WORKER: Dict[str, Any] = {}


def _init_worker(tokenizer_file: str, special: SpecialIds, dtype: str, field: str) -> None:
    from tokenizers import Tokenizer

    _WORKER.update(
        tok=Tokenizer.from_file(tokenizer_file), special=special, dtype=np.dtype(dtype), field=field
    )


def _encode_chunk(chunk: _Chunk) -> Tuple[int, int, np.ndarray]:
    """(documents, file bytes read, token ids with EOS after each document) of one chunk."""
    tok, special, field = _WORKER["tok"], _WORKER["special"], _WORKER["field"]
    texts = [
        t
        for i, line in enumerate(chunk.lines)
        if (t := _parse(chunk.path, chunk.first_line + i, line, field)) is not None
    ]
    ids: List[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        if special.bos is not None:
            ids.append(special.bos)
        ids.extend(enc.ids)
        ids.append(special.eos)
    return len(texts), chunk.bytes_read, np.asarray(ids, dtype=_WORKER["dtype"])


def _sha256(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _output_name(index: int, path: str) -> str:
    name = Path(path).name
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"part-{index:05d}-{name}{TOKEN_SUFFIX}"


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def tokenize_jsonl(
    inputs: Union[str, Sequence[str]],
    tokenizer: Union[str, Path],
    out: Union[str, Path],
    *,
    field: str = "text",
    workers: int = 1,
    dtype: Optional[str] = None,
    eos_id: Optional[int] = None,
    bos: bool = False,
    docs_per_chunk: int = 512,
    overwrite: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """Tokenize JSONL files (globs) into OLMo-core token files under ``out``; returns the
    ``meta.json`` contents. See the module docstring for the layout and resume behaviour.

    Bad input (invalid JSON, a missing field) raises :class:`UserError` and removes what this
    call wrote; an interruption keeps the finished files for the next call to resume from."""
    paths = expand_jsonl_inputs(inputs)
    tok, special = load_tokenizer(tokenizer, eos_id=eos_id, bos=bos)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    np_dtype = np.dtype(token_dtype(vocab, dtype))
    if vocab > np.iinfo(np_dtype).max + 1:
        raise UserError(f"--dtype {np_dtype.name} cannot hold ids of a {vocab}-token vocabulary")
    tokenizer_file = (
        Path(tokenizer) / "tokenizer.json" if Path(tokenizer).is_dir() else Path(tokenizer)
    )
    settings = {
        "inputs": [{"path": os.path.abspath(p), "bytes": os.path.getsize(p)} for p in paths],
        "tokenizer": str(Path(tokenizer).resolve()),
        "tokenizer_sha256": _sha256(tokenizer_file),
        "vocab_size": vocab,
        "special_ids": asdict(special),
        "field": field,
        "dtype": np_dtype.name,
    }
    out = Path(out)
    if (out / "meta.json").exists():
        if not overwrite:
            raise UserError(
                f"{out} already holds tokenized data (meta.json); pass --overwrite to redo it"
            )
        # Redo finished data beside it, so that it stays whole until the new data is complete.
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            meta = _tokenize_into(
                tmp,
                paths,
                settings,
                np_dtype,
                special,
                tokenizer_file,
                workers,
                field,
                docs_per_chunk,
                progress,
                resume=False,
            )
            move_into_place(tmp, out, overwrite=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return meta
    return _tokenize_into(
        out,
        paths,
        settings,
        np_dtype,
        special,
        tokenizer_file,
        workers,
        field,
        docs_per_chunk,
        progress,
        resume=not overwrite,
    )


def _tokenize_into(
    out: Path,
    paths: List[str],
    settings: Dict[str, Any],
    np_dtype: np.dtype,
    special: SpecialIds,
    tokenizer_file: Path,
    workers: int,
    field: str,
    docs_per_chunk: int,
    progress: bool,
    *,
    resume: bool,
) -> Dict[str, Any]:
    meta_path, state_path = out / "meta.json", out / ".progress.json"
    done = _resume_state(state_path, settings) if resume else {}
    done = {name: d for name, d in done.items() if _part_ok(out / name, d, np_dtype)}
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.tmp"):  # half-written token files of a killed run
        leftover.unlink()
    if not done:  # a fresh start: no stale parts from another run may remain
        meta_path.unlink(missing_ok=True)
        for stale in out.glob(f"part-*{TOKEN_SUFFIX}"):
            stale.unlink()
    written: List[Path] = []
    try:
        with _encoder_pool(workers, str(tokenizer_file), special, np_dtype.name, field) as pool:
            with _progress(progress, sum(os.path.getsize(p) for p in paths)) as on_bytes:
                base = 0
                for index, path in enumerate(paths):
                    name = _output_name(index, path)
                    if not (name in done and (out / name).exists()):
                        written.append(out / name)
                        done[name] = _tokenize_file(
                            path, out / name, docs_per_chunk, pool, lambda n: on_bytes(base + n)
                        )
                        _write_json(state_path, {"settings": settings, "files": done})
                    base += os.path.getsize(path)
    except UserError:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for f in written + [state_path]:
                f.unlink(missing_ok=True)
        raise
    files = [
        dict(done[_output_name(i, p)], name=_output_name(i, p), source=os.path.abspath(p))
        for i, p in enumerate(paths)
    ]
    meta = dict(
        settings,
        files=files,
        num_documents=sum(f["documents"] for f in files),
        num_tokens=sum(f["tokens"] for f in files),
    )
    _write_json(meta_path, meta)
    state_path.unlink(missing_ok=True)
    return meta


def _part_ok(path: Path, done: Any, dtype: np.dtype) -> bool:
    """Whether a token file an earlier run finished is still whole (else it is made again)."""
    try:
        ok = path.stat().st_size == int(done["tokens"]) * dtype.itemsize
    except (OSError, KeyError, TypeError, ValueError):
        ok = False
    if not ok and path.exists():
        from ..errors import note

        note(f"{path} is not the size an earlier run recorded: tokenizing its input again")
    return ok


def _resume_state(state_path: Path, settings: Dict[str, Any]) -> Dict[str, Any]:
    """Files finished by an interrupted run with the same settings."""
    if not state_path.exists():
        return {}
    try:
        state = json.loads(state_path.read_text())
        return dict(state["files"]) if state.get("settings") == settings else {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


@contextlib.contextmanager
def _encoder_pool(
    workers: int, tokenizer_file: str, special: SpecialIds, dtype: str, field: str
) -> Iterator[Optional[Any]]:
    """A process pool of encoders (ordered ``imap``), or ``None`` to encode in this process."""
    args = (tokenizer_file, special, dtype, field)
    if workers <= 1:
        _init_worker(*args)
        yield None
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ctx.Pool(workers, _init_worker, args)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


@contextlib.contextmanager
def _progress(enabled: bool, total_bytes: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    if not enabled:
        yield lambda n: None
        return
    columns = [TextColumn("tokenizing"), BarColumn(), DownloadColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("tokenizing", total=total_bytes)
        yield lambda n: bar.update(task, completed=n)


def expand_jsonl_inputs(inputs: Union[str, Sequence[str]]) -> List[str]:
    try:
        paths = expand_paths(inputs)
    except Exception as e:
        raise UserError(str(e).replace("token files", "JSONL files")) from None
    bad = [p for p in paths if not p.endswith(_SUFFIXES)]
    if bad:
        raise UserError(f"{bad[0]} is not a JSONL file; expected one of {', '.join(_SUFFIXES)}")
    return paths


def _tokenize_file(
    path: str, dest: Path, docs_per_chunk: int, pool: Optional[Any], on_bytes: Any
) -> Dict[str, Any]:
    documents = tokens = 0
    with atomic_file(dest) as tmp, open(tmp, "wb") as f:
        chunks = _chunks(path, docs_per_chunk)
        results = (
            pool.imap(_encode_chunk, chunks) if pool is not None else map(_encode_chunk, chunks)
        )
        for docs, bytes_read, array in results:
            documents += docs
            tokens += len(array)
            f.write(array.tobytes())
            on_bytes(bytes_read)
    return {"documents": documents, "tokens": tokens}
