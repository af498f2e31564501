"""Hugging Face checkpoint directories on disk: validated lazy reading, streamed sharded writing.

Reading opens each safetensors shard only long enough to copy one tensor out, so memory holds the
tensors being converted, never a whole shard or model. Writing streams too: the ``safetensors``
library can only serialise a dict of tensors that are all in memory at once, so
:func:`write_safetensors` writes the (documented, simple) file format itself: an 8-byte
little-endian header length, a JSON header with each tensor's dtype, shape and byte range, then
the raw bytes, one tensor at a time.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open

from ..checkpoint import CheckpointError, LazyTensor

__all__ = [
    "CONFIG_FILE",
    "INDEX_FILE",
    "SINGLE_FILE",
    "HFDir",
    "write_safetensors",
    "write_sharded",
    "parse_size",
    "reporting",
    "is_hf_dir",
]

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}

Meta = Tuple[Tuple[int, ...], torch.dtype]


def is_hf_dir(path: Union[str, Path]) -> bool:
    """Whether ``path`` looks like a transformers model directory (config.json with a
    ``model_type``) rather than an OLMo-core checkpoint."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except json.JSONDecodeError:
        return False


@dataclass
class HFDir:
    """A transformers model directory: ``config.json`` plus safetensors weights (one file, or
    shards listed in ``model.safetensors.index.json``), checked completely when opened."""

    path: Path
    config: Dict[str, Any]
    """The raw ``config.json``."""
    shards: Dict[str, str]
    """Tensor name -> shard file name."""
    tensors: Dict[str, Meta]
    """Tensor name -> (shape, dtype), from the shard headers."""

    @classmethod
    def open(cls, path: Union[str, Path]) -> "HFDir":
        p = Path(path)
        if not p.is_dir():
            raise CheckpointError(f"{p} is not a directory; give a transformers model directory")
        config_file = p / CONFIG_FILE
        if not config_file.is_file():
            raise CheckpointError(
                f"{p} has no config.json, so it is not a transformers model directory; give the "
                "directory that holds config.json and the *.safetensors files"
            )
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_file} is not valid JSON ({e})") from e
        shards = _weight_map(p)
        tensors: Dict[str, Meta] = {}
        for shard in sorted(set(shards.values())):
            found = _read_header(p / shard)
            listed = [k for k, s in shards.items() if s == shard]
            missing = [k for k in listed if k not in found]
            if missing:
                raise CheckpointError(
                    f"{p / INDEX_FILE} places {missing[0]} in {shard}, but that shard does not "
                    "contain it; the index and the shards are from different checkpoints"
                )
            tensors.update({k: found[k] for k in listed})
        return cls(p, config, shards, tensors)

    @property
    def model_type(self) -> Optional[str]:
        return self.config.get("model_type")

    def load(self, name: str) -> torch.Tensor:
        """One tensor, read from its shard (the file is closed again right after)."""
        with safe_open(str(self.path / self.shards[name]), framework="pt") as f:
            return f.get_tensor(name)

    def lazy(self, name: str) -> LazyTensor:
        shape, dtype = self.tensors[name]
        return LazyTensor(shape, dtype, lambda: self.load(name))


def _weight_map(p: Path) -> Dict[str, str]:
    index = p / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e!r})") from e
        for shard in sorted(set(weight_map.values())):
            if not (p / shard).is_file():
                raise CheckpointError(
                    f"shard {shard} listed in {index} is missing from {p}; download or copy the "
                    "complete checkpoint"
                )
        return dict(weight_map)
    if (p / SINGLE_FILE).is_file():
        return {k: SINGLE_FILE for k in _read_header(p / SINGLE_FILE)}
    others = sorted(q.name for q in p.iterdir() if q.suffix in (".bin", ".pt", ".safetensors"))
    raise CheckpointError(
        f"{p} has neither {SINGLE_FILE} nor {INDEX_FILE}"
        + (f" (found {', '.join(others)}; only safetensors weights are read)" if others else "")
    )


def _read_header(file: Path) -> Dict[str, Meta]:
    # safe_open checks that the header is complete and the data covers the whole file.
    try:
        with safe_open(str(file), framework="pt") as f:
            out = {}
            for k in f.keys():
                s = f.get_slice(k)
                out[k] = (tuple(s.get_shape()), _DTYPES[s.get_dtype()])
            return out
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{file} is not a readable safetensors file ({e}); it is probably truncated or "
            "corrupt: copy it again"
        ) from e


def write_safetensors(
    file: Path, items: Sequence[Tuple[str, LazyTensor]], metadata: Optional[Dict[str, str]] = None
) -> None:
    """Write one safetensors file, loading and writing one tensor at a time."""
    header: Dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, t in items:
        nbytes = _nbytes(t)
        header[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # keep the data 8-byte aligned, as safetensors does
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, t in items:
            tensor = t.load()
            if tuple(tensor.shape) != tuple(t.shape) or tensor.dtype != t.dtype:
                raise CheckpointError(
                    f"tensor {name} came out {tuple(tensor.shape)} {tensor.dtype}, "
                    f"expected {tuple(t.shape)} {t.dtype}"
                )
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del tensor


def _nbytes(t: LazyTensor) -> int:
    n = 1
    for s in t.shape:
        n *= s
    return n * t.dtype.itemsize


def write_sharded(
    out: Path,
    items: Sequence[Tuple[str, LazyTensor]],
    *,
    max_shard_bytes: int,
    metadata: Optional[Dict[str, str]] = None,
    on_tensor: Optional[Callable[[str], None]] = None,
) -> List[str]:
    """Write ``items`` in order into ``model.safetensors`` or, when they exceed
    ``max_shard_bytes``, into ``model-0000i-of-0000n.safetensors`` shards plus
    ``model.safetensors.index.json`` (the transformers layout). Returns the file names."""
    shards: List[List[Tuple[str, LazyTensor]]] = [[]]
    size = 0
    for name, t in items:
        n = _nbytes(t)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, t if on_tensor is None else reporting(name, t, on_tensor)))
        size += n
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        write_safetensors(out / name, shard, metadata)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(_nbytes(t) for _, t in items)},
            "weight_map": {k: name for name, shard in zip(names, shards) for k, _ in shard},
        }
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return names


def reporting(name: str, t: LazyTensor, on_tensor: Callable[[str], None]) -> LazyTensor:
    """``t`` that calls ``on_tensor(name)`` each time it has been loaded (for progress bars)."""

    def load() -> torch.Tensor:
        tensor = t.load()
        on_tensor(name)
        return tensor

    return LazyTensor(t.shape, t.dtype, load)


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: Union[str, int]) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().replace(" ", "")
    num = s.rstrip("KMGIB")
    unit = s[len(num) :]
    try:
        value = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise CheckpointError(
            f"cannot read size {text!r}; write it like 5GB, 500MB or 2GiB"
        ) from None
    if value <= 0:
        raise CheckpointError(f"size {text!r} must be positive")
    return int(value)
