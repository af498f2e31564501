"""The teacher top-k store: a directory of fixed-size rows aligned with OLMo-core token files.

Layout::

    STORE/meta.json           what the store holds and what it was made from (see below)
    STORE/chunk-000000.bin    rows for a contiguous range of token positions, in order
    STORE/chunk-000001.bin    ...

Entry ``t`` (global token position in the token files taken in sorted path order) holds the
teacher's ``k`` most likely next tokens and their log-probabilities, normalised over the full
vocabulary, computed over the same ``sequence_length`` windows as OLMo-core's FSL dataset (each
file cut into ``sequence_length`` chunks). The tail of each file, shorter than a window, is
computed as one shorter window, so every token position has an entry; the FSL dataset never
reads those tails. Rows are encoded by :class:`~olmo_flex_ext.distill.codec.TopKCodec`.

``meta.json``: ``format``, ``version``, ``vocab_size``, ``k``, ``sequence_length``,
``num_tokens``, ``tokenizer`` (identifier and special ids), ``token_dtype``, ``token_files``
(:meth:`TokenFiles.fingerprint`), ``encoding`` (codec layout), ``chunks`` (file, start, tokens),
``teacher`` (path and fingerprints) and ``generation`` settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from olmo_core.data import TokenizerConfig

from ..errors import UserError
from .codec import CorruptRow, TopKCodec

__all__ = [
    "is_store",
    "TopKStore",
    "TopKStoreError",
    "tokenizer_identity",
    "STORE_FORMAT",
    "STORE_VERSION",
    "META_FILE",
]

STORE_FORMAT = "olmo-flex-topk"
STORE_VERSION = 1
META_FILE = "meta.json"


class TopKStoreError(UserError):
    """A top-k store that cannot be used as asked; the message says why and what to do."""


def tokenizer_identity(tokenizer: Union[TokenizerConfig, Dict[str, Any]]) -> Dict[str, Any]:
    """The fields that make two tokenizers interchangeable for a store."""
    d = tokenizer if isinstance(tokenizer, dict) else tokenizer.as_dict()
    out = {k: d.get(k) for k in ("identifier", "vocab_size", "eos_token_id", "pad_token_id")}
    out["bos_token_id"] = d.get("bos_token_id")
    if out["identifier"] is not None:
        out["identifier"] = str(out["identifier"])
    return out


def is_store(path: Union[str, Path]) -> bool:
    """Whether ``path`` is (or claims to be) a top-k store: a directory with a ``meta.json`` of
    the store format."""
    meta = Path(path) / META_FILE
    try:
        return json.loads(meta.read_text()).get("format") == STORE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class TopKStore:
    """Read access to a finished store: ``read(start, count)`` -> ``(ids int64 [count, k],
    logprobs float32 [count, k])``, memory-mapped; ids in ascending order within a row."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            partial = self.path.parent / f".{self.path.name}.partial"
            hint = (
                f" (an unfinished generation is in {partial}: rerun `olmo-flex logprobs` with the "
                "same arguments to finish it)"
                if partial.exists()
                else " (make one with `olmo-flex logprobs`)"
            )
            raise TopKStoreError(f"{self.path} is not a top-k store: no {META_FILE}{hint}")
        try:
            self.meta: Dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise TopKStoreError(f"{meta_path} is not valid JSON ({e})") from e
        if self.meta.get("format") != STORE_FORMAT or self.meta.get("version") != STORE_VERSION:
            raise TopKStoreError(
                f"{self.path} is not a version-{STORE_VERSION} {STORE_FORMAT} store "
                f"(format={self.meta.get('format')!r}, version={self.meta.get('version')!r})"
            )
        try:
            self.codec = TopKCodec(int(self.meta["vocab_size"]), int(self.meta["k"]))
            self._starts = np.array([int(c["start"]) for c in self.chunks], dtype=np.int64)
            for c in self.chunks:
                if Path(c["file"]).name != c["file"] or int(c["tokens"]) < 0:
                    raise ValueError(f"bad chunk entry {c}")
            int(self.meta["sequence_length"]), int(self.meta["num_tokens"])
            dict(self.meta["tokenizer"]), list(self.meta["token_files"])
        except (KeyError, TypeError, ValueError) as e:
            raise TopKStoreError(
                f"{meta_path} is damaged ({type(e).__name__}: {e}); regenerate the store with "
                "`olmo-flex logprobs`"
            ) from None
        self._maps: Dict[int, np.ndarray] = {}
        self._check_complete()

    # ---- what the store holds ------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    @property
    def sequence_length(self) -> int:
        return int(self.meta["sequence_length"])

    @property
    def num_tokens(self) -> int:
        return int(self.meta["num_tokens"])

    @property
    def tokenizer(self) -> Dict[str, Any]:
        return dict(self.meta["tokenizer"])

    @property
    def token_files(self) -> List[Dict[str, Any]]:
        return list(self.meta["token_files"])

    @property
    def chunks(self) -> List[Dict[str, Any]]:
        return list(self.meta["chunks"])

    @property
    def teacher(self) -> Dict[str, Any]:
        return dict(self.meta.get("teacher") or {})

    @property
    def bytes_per_token(self) -> int:
        return self.codec.row_bytes

    def file_offsets(self) -> List[int]:
        """Global position of the first token of each token file (sorted path order)."""
        return [0] + list(np.cumsum([f["tokens"] for f in self.token_files])[:-1])

    # ---- reading -------------------------------------------------------------------------

    def _check_complete(self) -> None:
        expected = 0
        for c in self.chunks:
            f = self.path / c["file"]
            size = f.stat().st_size if f.is_file() else None
            if c["start"] != expected or size != c["tokens"] * self.codec.row_bytes:
                found = "missing" if size is None else f"{size:,d} bytes"
                raise TopKStoreError(
                    f"top-k store {self.path} is truncated or damaged: {c['file']} is {found}, "
                    f"expected {c['tokens'] * self.codec.row_bytes:,d} bytes; regenerate it with "
                    "`olmo-flex logprobs`"
                )
            expected += c["tokens"]
        if expected != self.num_tokens:
            raise TopKStoreError(
                f"top-k store {self.path} is truncated: its chunks cover {expected:,d} of "
                f"{self.num_tokens:,d} tokens; regenerate it with `olmo-flex logprobs`"
            )

    def _rows(self, chunk: int) -> np.ndarray:
        m = self._maps.get(chunk)
        if m is None:
            c = self.chunks[chunk]
            m = np.memmap(
                self.path / c["file"],
                dtype=np.uint8,
                mode="r",
                shape=(c["tokens"], self.codec.row_bytes),
            )
            self._maps[chunk] = m
        return m

    def read_rows(self, start: int, count: int) -> np.ndarray:
        """Encoded rows for token positions ``[start, start + count)``."""
        if start < 0 or count < 0 or start + count > self.num_tokens:
            raise IndexError(
                f"positions [{start}, {start + count}) outside the store's {self.num_tokens} tokens"
            )
        parts = []
        pos, end = start, start + count
        while pos < end:
            c = int(np.searchsorted(self._starts, pos, side="right")) - 1
            local = pos - int(self._starts[c])
            n = min(end - pos, self.chunks[c]["tokens"] - local)
            parts.append(self._rows(c)[local : local + n])
            pos += n
        if len(parts) == 1:
            return np.asarray(parts[0])
        return np.concatenate(parts) if parts else np.empty((0, self.codec.row_bytes), np.uint8)

    def read(self, start: int, count: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(ids int64 [count, k], logprobs float32 [count, k])`` for positions
        ``[start, start + count)``; a damaged row raises :class:`TopKStoreError` naming its
        chunk file and row."""
        try:
            return self.codec.decode(self.read_rows(start, count), check=True)
        except CorruptRow as e:
            raise self.damaged(start + e.row, e.reason) from None

    def damaged(self, position: int, reason: str) -> TopKStoreError:
        """The error for a damaged entry at token ``position``."""
        c = int(np.searchsorted(self._starts, position, side="right")) - 1
        chunk = self.chunks[c]
        return TopKStoreError(
            f"top-k store {self.path} is damaged: {self.path / chunk['file']} row "
            f"{position - chunk['start']:,d} (token position {position:,d}) has {reason}; "
            "regenerate the store with `olmo-flex logprobs ... --overwrite`"
        )

    def verify(self, block: int = 1 << 16) -> str:
        """Check every chunk against the SHA-256 recorded when it was written and every row
        (ids ascending and in range, log-probs not NaN and at most 0), ``block`` rows at a
        time; raises :class:`TopKStoreError` naming the first bad file (and row)."""
        from ..safe_io import sha256_file

        for chunk in self.chunks:
            for lo in range(0, chunk["tokens"], block):  # first: a bad row is named exactly
                self.read(chunk["start"] + lo, min(block, chunk["tokens"] - lo))
            file = self.path / chunk["file"]
            if chunk.get("sha256") and sha256_file(file) != chunk["sha256"]:
                raise TopKStoreError(
                    f"top-k store {self.path} is damaged: {file} does not have the SHA-256 "
                    "recorded when it was written; regenerate the store with `olmo-flex logprobs`"
                )
        hashed = sum(1 for c in self.chunks if c.get("sha256"))
        return f"{len(self.chunks)} chunks ({hashed} with recorded SHA-256), {self.num_tokens:,d} rows valid"

    def describe(self) -> str:
        """A few lines on what the store holds and what it was made from."""
        tok = self.tokenizer
        return "\n".join([
            f"{self.path}: top-k store (format {STORE_FORMAT} v{STORE_VERSION})",
            f"entries: {self.num_tokens:,d} tokens x top-{self.k} over a vocabulary of "
            f"{self.vocab_size:,d}, windows of {self.sequence_length}, {self.bytes_per_token} "
            f"bytes/token, {len(self.chunks)} chunks",
            f"tokenizer: {tok.get('identifier')} (vocab {tok.get('vocab_size')}, eos "
            f"{tok.get('eos_token_id')}, pad {tok.get('pad_token_id')})",
            f"token files: {', '.join(f['name'] for f in self.token_files)}",
            f"teacher: {self.teacher.get('path', '?')}",
        ])  # fmt: skip

    def __getstate__(self):  # memory maps are reopened in data-loader worker processes
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    # ---- validation ----------------------------------------------------------------------

    def check_compatible(
        self,
        *,
        token_files: Sequence[Dict[str, Any]],
        sequence_length: int,
        tokenizer: Optional[Union[TokenizerConfig, Dict[str, Any]]] = None,
        k: Optional[int] = None,
        vocab_size: Optional[int] = None,
    ) -> None:
        """Raise :class:`TopKStoreError` unless this store was made for exactly this data
        (fingerprints from :meth:`TokenFiles.fingerprint`), windows, tokenizer, k and vocabulary."""
        where = f"top-k store {self.path}"
        regen = "regenerate the store for this data with `olmo-flex logprobs`"
        if tokenizer is not None:
            want, have = tokenizer_identity(tokenizer), self.tokenizer
            if want != have:
                diff = ", ".join(
                    f"{key}: store {have.get(key)!r} vs data {want.get(key)!r}"
                    for key in want
                    if want.get(key) != have.get(key)
                )
                raise TopKStoreError(
                    f"{where} was made for another tokenizer ({diff}); {regen} and its tokenizer "
                    "(--tokenizer)"
                )
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise TopKStoreError(
                f"{where} holds log-probs over a vocabulary of {self.vocab_size:,d} but the model "
                f"has {vocab_size:,d}; teacher and student need the same vocabulary"
            )
        if k is not None and k != self.k:
            raise TopKStoreError(
                f"{where} holds the top {self.k} tokens per position but top_k={k} was asked; "
                f"set top_k={self.k} (or leave it unset), or {regen} with --top-k {k}"
            )
        if sequence_length != self.sequence_length:
            raise TopKStoreError(
                f"{where} was computed over windows of {self.sequence_length} tokens but the "
                f"dataset uses sequence_length={sequence_length}, so the teacher saw other "
                f"contexts; set sequence_length={self.sequence_length} or {regen} with "
                f"--seq-len {sequence_length}"
            )
        have_files = [(f["name"], f["tokens"], f["sha256"]) for f in self.token_files]
        want_files = [(f["name"], f["tokens"], f["sha256"]) for f in token_files]
        if have_files != want_files:
            detail = _first_difference(have_files, want_files)
            raise TopKStoreError(f"{where} was made for other token files ({detail}); {regen}")


def _first_difference(have: List[tuple], want: List[tuple]) -> str:
    if len(have) != len(want):
        return f"store has {len(have)} files, dataset has {len(want)}"
    for (hn, ht, hs), (wn, wt, ws) in zip(have, want):
        if hn != wn:
            return f"store file {hn} vs dataset file {wn}"
        if ht != wt:
            return f"{wn}: store {ht:,d} tokens vs dataset {wt:,d}"
        if hs != ws:
            return f"{wn}: same size but different content"
    return "unknown difference"
