"""Fixed-size binary rows for a teacher's top-k predictions at one token position.

A row holds the k token ids, losslessly, as an Elias-Fano code of the sorted id set, followed by
the k log-probabilities as bfloat16 in the same (ascending id) order. Elias-Fano needs
``k * l + k + (V - 1 >> l) + 1`` bits with ``l = floor(log2(V / k))``: for the dolma2 vocabulary
(V = 100,352) and k = 128 that is 185 bytes of ids instead of 272 with 17-bit packing, so a row is
441 bytes. Rows have a fixed size, so a store is a flat array that memory-maps and slices.

numpy has no Elias-Fano or bfloat16; both are a few vectorised lines here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

__all__ = ["TopKCodec", "CorruptRow", "bf16_bits", "bf16_to_float32"]


class CorruptRow(ValueError):
    """Row ``row`` of a decoded block is not a valid top-k entry (``reason`` says how)."""

    def __init__(self, row: int, reason: str):
        super().__init__(f"row {row}: {reason}")
        self.row, self.reason = row, reason


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even like torch."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


@dataclass(frozen=True)
class TopKCodec:
    """Encoder/decoder of fixed-size rows for ``k`` ids below ``vocab_size``."""

    vocab_size: int
    k: int

    def __post_init__(self):
        if not 1 <= self.k <= self.vocab_size:
            raise ValueError(f"top-k must be between 1 and the vocabulary size, got k={self.k}")

    @property
    def lower_bits(self) -> int:
        return max(0, int(math.floor(math.log2(self.vocab_size / self.k))))

    @property
    def upper_bits(self) -> int:
        return self.k + ((self.vocab_size - 1) >> self.lower_bits) + 1

    @property
    def lower_bytes(self) -> int:
        return (self.k * self.lower_bits + 7) // 8

    @property
    def id_bytes(self) -> int:
        return self.lower_bytes + (self.upper_bits + 7) // 8

    @property
    def row_bytes(self) -> int:
        return self.id_bytes + 2 * self.k

    def describe(self) -> dict:
        return {
            "ids": "elias-fano",
            "lower_bits": self.lower_bits,
            "id_bytes": self.id_bytes,
            "logprobs": "bfloat16",
            "row_bytes": self.row_bytes,
            "order": "ascending token id",
        }

    def encode(self, ids: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
        """``ids`` (n, k) distinct per row, ``logprobs`` (n, k) -> rows (n, row_bytes) uint8."""
        ids = np.asarray(ids, dtype=np.int64)
        n, k = ids.shape
        if k != self.k or logprobs.shape != ids.shape:
            raise ValueError(f"expected ids and logprobs of shape (n, {self.k}), got {ids.shape}")
        if n and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        lps = np.asarray(logprobs, dtype=np.float32)
        if k > 1 and n and not (np.diff(ids, axis=1) > 0).all():  # callers usually pre-sort
            order = np.argsort(ids, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
            lps = np.take_along_axis(lps, order, axis=1)
            if (np.diff(ids, axis=1) == 0).any():
                raise ValueError("top-k ids must be distinct within a row")
        out = np.empty((n, self.row_bytes), dtype=np.uint8)
        lo = self.lower_bits
        if lo:  # the low `lo` bits of each id, concatenated (lo < 32)
            low = np.ascontiguousarray((ids & ((1 << lo) - 1)).astype("<u4"))
            bits = np.unpackbits(low.view(np.uint8).reshape(n, k, 4), axis=2, bitorder="little")
            out[:, : self.lower_bytes] = np.packbits(
                bits[:, :, :lo].reshape(n, k * lo), axis=1, bitorder="little"
            )
        upper = np.zeros((n, self.upper_bits), dtype=np.uint8)
        np.put_along_axis(upper, (ids >> lo) + np.arange(k), 1, axis=1)
        out[:, self.lower_bytes : self.id_bytes] = np.packbits(upper, axis=1, bitorder="little")
        out[:, self.id_bytes :] = bf16_bits(lps).view(np.uint8).reshape(n, 2 * k)
        return out

    def decode(self, rows: np.ndarray, check: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """rows (n, row_bytes) uint8 -> ids int64 (n, k), logprobs float32 (n, k). Raises
        :class:`CorruptRow` for the first row that does not encode k ids (with ``check``, also
        one that :meth:`check` refuses)."""
        n, k, lo = rows.shape[0], self.k, self.lower_bits
        upper = np.unpackbits(
            rows[:, self.lower_bytes : self.id_bytes],
            axis=1,
            count=self.upper_bits,
            bitorder="little",
        )
        flat = np.flatnonzero(upper.view(np.bool_))  # much faster than a 2-D nonzero
        if flat.size != n * k:
            counts = upper.sum(axis=1)
            bad = int(np.argmax(counts != k))
            raise CorruptRow(bad, f"it encodes {int(counts[bad])} token ids instead of {k}")
        ids = ((flat % self.upper_bits).reshape(n, k) - np.arange(k)) << lo
        if lo:
            width, dtype = (16, "<u2") if lo <= 16 else (32, "<u4")
            bits = np.zeros((n, k, width), dtype=np.uint8)
            bits[:, :, :lo] = np.unpackbits(
                rows[:, : self.lower_bytes], axis=1, count=k * lo, bitorder="little"
            ).reshape(n, k, lo)
            ids |= np.packbits(bits, axis=2, bitorder="little").view(dtype)[..., 0]
        bits = np.ascontiguousarray(rows[:, self.id_bytes :]).view(np.uint16)
        lps = bf16_to_float32(bits)
        if check:
            self.check(ids, lps)
        return ids, lps

    def check(self, ids: np.ndarray, lps: np.ndarray) -> None:
        """Raise :class:`CorruptRow` for the first row whose ids are not ascending token ids below
        the vocabulary size or whose log-probs are not log-probabilities (NaN, or above 0;
        ``-inf`` is a probability of 0)."""
        if not ids.size:
            return
        # The common case in one pass each: ascending ids (so the last is the largest), and
        # `lps <= 0`, which is False for NaN too. Only a bad block is examined row by row.
        ascending = ids.shape[1] == 1 or bool((np.diff(ids, axis=1) > 0).all())
        if (
            ascending
            and ids[:, 0].min() >= 0
            and ids[:, -1].max() < self.vocab_size
            and bool((lps <= 0).all())
        ):
            return
        checks = [
            (
                (ids >= self.vocab_size) | (ids < 0),
                f"a token id at or above the vocabulary size {self.vocab_size}",
            ),
            (np.diff(ids, axis=1) <= 0, "token ids that are not in ascending order"),
            (np.isnan(lps), "a NaN log-probability"),
            (lps > 0, "a positive log-probability"),
        ]
        for bad, reason in checks:
            rows = bad.any(axis=1)
            if rows.any():
                raise CorruptRow(int(np.argmax(rows)), reason)
