"""Reading checkpoint files without running code from them, and finding damage in them.

A torch DCP checkpoint is a ``.metadata`` file (a pickle) plus data files whose items are
``torch.save`` archives (pickles too). Plain ``pickle.load`` of either runs whatever code the file
names, and both torch's and OLMo-core's readers unpickle ``.metadata`` that way (OLMo-core also
loads every tensor and the trainer state ``train/rank*.pt`` with ``weights_only=False``). So:

- :func:`read_dcp_metadata` unpickles ``.metadata`` with a restricted unpickler that only builds
  the classes a DCP metadata holds (:data:`METADATA_GLOBALS`, torch dtypes) and refuses any other
  name before it is imported or called;
- :class:`SafeDCPReader` (with :class:`SafeLoadPlanner`) is torch's ``FileSystemReader`` reading
  that metadata, with tensors and byte items loaded ``weights_only=True``: every project path
  that reads a checkpoint goes through it (:mod:`olmo_flex_ext.checkpoint`);
- :func:`check_for_olmo_core` checks a checkpoint before OLMo-core's own reader opens it (a
  trainer's ``load_path`` or resumed run): the metadata as above, and the pickle of every data
  item and trainer-state file statically disassembled (``torch.serialization.
  get_unsafe_globals_in_checkpoint``; nothing is unpickled) for names outside what
  ``weights_only=True`` accepts;
- :func:`check_sizes` compares the data files with the byte ranges the metadata gives them
  (truncation), and :func:`weight_file_digests` / :func:`check_weight_files` record and compare
  the size and SHA-256 of every file of a model-only checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from .errors import UserError

__all__ = [
    "UnsafeFileError",
    "DamagedFileError",
    "METADATA_FILE",
    "METADATA_GLOBALS",
    "read_dcp_metadata",
    "check_sizes",
    "SafeDCPReader",
    "SafeLoadPlanner",
    "safe_dcp_load",
    "scan_torch_save",
    "check_for_olmo_core",
    "sha256_file",
    "weight_file_digests",
    "check_weight_files",
]

METADATA_FILE = ".metadata"

_DCP = "torch.distributed.checkpoint.metadata"
METADATA_GLOBALS = frozenset(
    [(_DCP, name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    )]
    + [
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("olmo_core.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
    ]
)  # fmt: skip
"""(module, name) of every class a DCP ``.metadata`` written by torch 2.x or OLMo-core holds
(torch dtypes such as ``torch.float32`` are accepted too)."""

# What OLMo-core's trainer state (train/rank*.pt) holds besides plain tensors: numpy RNG state.
_TRAINER_STATE_GLOBALS = frozenset(
    {"numpy.dtype", "numpy.ndarray", "numpy.core.multiarray._reconstruct",
     "numpy._core.multiarray._reconstruct"}
    | {f"numpy.dtypes.{t}DType" for t in ("UInt32", "Int64", "Float64", "UInt8", "Int32")}
)  # fmt: skip

PathLike = Union[str, "os.PathLike[str]"]


class UnsafeFileError(UserError):
    """A file that would run code or load objects no checkpoint holds if it were unpickled."""


class DamagedFileError(UserError):
    """A file that is truncated, corrupt or not what it should be."""


# ---- .metadata ----------------------------------------------------------------------------------


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"{self.path} asks to load {module}.{name}, which no checkpoint metadata holds: it was "
            "not opened (unpickling it could run code); use a checkpoint from a source you trust"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self.path} holds persistent references; it is not DCP metadata")


_METADATA_CACHE: Dict[Tuple[str, int, int], Metadata] = {}


def read_dcp_metadata(directory: PathLike) -> Metadata:
    """The DCP metadata of ``directory``, read with the restricted unpickler (cached while the
    file is unchanged); OLMo-core's storage records are converted to torch's."""
    path = Path(directory) / METADATA_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DamagedFileError(
            f"{directory} has no {METADATA_FILE} file, so it is not a complete DCP checkpoint; "
            "copy it again or use another checkpoint"
        ) from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _METADATA_CACHE:
        return _METADATA_CACHE[key]
    try:
        with open(path, "rb") as f:
            meta = _MetadataUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:
        raise DamagedFileError(
            f"{path} is damaged ({type(e).__name__}: {e}); copy the checkpoint again"
        ) from None
    if not isinstance(meta, Metadata) or not isinstance(meta.storage_data, dict):
        raise DamagedFileError(f"{path} is not DCP metadata (it holds a {type(meta).__name__})")
    meta.storage_data = {k: _torch_storage_info(path, v) for k, v in meta.storage_data.items()}
    if getattr(meta, "storage_meta", None) is None:
        meta.storage_meta = StorageMeta()
    if len(_METADATA_CACHE) > 16:
        _METADATA_CACHE.clear()
    _METADATA_CACHE[key] = meta
    return meta


def _torch_storage_info(path: Path, info: Any) -> _StorageInfo:
    rel, offset, length = (getattr(info, a, None) for a in ("relative_path", "offset", "length"))
    if not (isinstance(rel, str) and isinstance(offset, int) and isinstance(length, int)):
        raise DamagedFileError(f"{path} has a storage record without file, offset and length")
    if Path(rel).name != rel or rel in (".", ".."):
        raise UnsafeFileError(f"{path} points at a file outside its checkpoint ({rel!r})")
    if getattr(info, "transform_descriptors", None):
        raise DamagedFileError(
            f"{path} stores its data through transforms ({info.transform_descriptors}), which "
            "this project does not read"
        )
    return _StorageInfo(relative_path=rel, offset=offset, length=length)


def check_sizes(directory: PathLike, meta: Metadata) -> None:
    """Refuse a checkpoint whose data files are missing or shorter than the metadata says."""
    ends: Dict[str, int] = {}
    for info in meta.storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    for rel, end in sorted(ends.items()):
        file = Path(directory) / rel
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise DamagedFileError(
                f"{file} is missing: the checkpoint is incomplete; copy it again"
            ) from None
        if size < end:
            raise DamagedFileError(
                f"{file} is truncated ({size:,d} bytes, its metadata needs {end:,d}); copy the "
                "checkpoint again"
            )


# ---- reading tensors --------------------------------------------------------------------------


class SafeDCPReader(FileSystemReader):
    """torch's ``FileSystemReader`` (tensors loaded ``weights_only=True``) with the metadata read
    by :func:`read_dcp_metadata` and checked by :func:`check_sizes`, and errors that name the
    damaged file. Reads both torch's and OLMo-core's DCP layouts."""

    def __init__(self, path: PathLike):
        super().__init__(path)
        self._item: Optional[_StorageInfo] = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        meta = read_dcp_metadata(self.path)
        check_sizes(self.path, meta)
        meta.storage_meta.load_id = self.load_id
        return meta

    def _slice_file(self, file, sinfo: _StorageInfo):
        self._item = sinfo
        return super()._slice_file(file, sinfo)

    def read_data(self, plan, planner):
        try:
            return super().read_data(plan, planner)
        except UserError:
            raise
        except Exception as e:
            raise _item_error(Path(self.path), self._item, e) from None


def _item_error(directory: Path, item: Optional[_StorageInfo], e: Exception) -> UserError:
    where = (
        f"{directory / item.relative_path} (bytes {item.offset:,d}+{item.length:,d})"
        if item
        else str(directory)
    )
    if isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e).replace(" ", "_").lower():
        return UnsafeFileError(
            f"{where} holds objects other than tensors (loading it could run code); it was not "
            "loaded: use a checkpoint from a source you trust"
        )
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DamagedFileError(f"{where} is damaged ({first}); copy the checkpoint again")


class SafeLoadPlanner(DefaultLoadPlanner):
    """torch's load planner with byte items (non-tensor values) loaded ``weights_only=True``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        super().load_bytes(read_item, _saved(obj))


def _saved(obj: Any) -> io.BytesIO:
    # DefaultLoadPlanner.load_bytes unpickles what it is given with weights_only=False; it gets
    # an object already loaded safely, serialised again here.
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def safe_dcp_load(state: Dict[str, Any], directory: PathLike, *, collective: bool = True) -> None:
    """``dcp.load`` of ``state`` (in place) from ``directory`` through :class:`SafeDCPReader`;
    collective (every rank calls it) when a process group exists and ``collective``, else local
    to this rank."""
    import torch.distributed as dist

    distributed = collective and dist.is_available() and dist.is_initialized()
    try:
        dcp.load(
            state,
            storage_reader=SafeDCPReader(directory),
            planner=SafeLoadPlanner(),
            no_dist=not distributed,
        )
    except CheckpointException as e:
        raise first_user_error(e) or e from None


def first_user_error(e: CheckpointException) -> Optional[UserError]:
    """The first :class:`UserError` among the failures DCP gathered (it wraps them all)."""
    for value in e.failures.values():
        exc = value[0] if isinstance(value, tuple) else value
        if isinstance(exc, UserError):
            return exc
    return None


# ---- before OLMo-core opens a checkpoint ----------------------------------------------------------


class _Window(io.RawIOBase):
    """Bytes ``[offset, offset + length)`` of an open file, as a seekable file of their own."""

    def __init__(self, f, offset: int, length: int):
        self.f, self.offset, self.length, self.pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, min(self.length, base + pos))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), self.length - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def scan_torch_save(file, where: str, extra: Iterable[str] = ()) -> None:
    """Refuse a ``torch.save`` archive whose pickle names anything ``weights_only=True`` does not
    accept (besides ``extra``), without unpickling it."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception as e:
        raise UnsafeFileError(
            f"{where} cannot be checked ({type(e).__name__}: {e}): it is damaged or holds more "
            "than tensors; it was not loaded"
        ) from None
    unsafe = sorted(set(unsafe) - set(extra))
    if unsafe:
        raise UnsafeFileError(
            f"{where} names {', '.join(unsafe[:3])}, which no checkpoint holds: it was not loaded "
            "(unpickling it could run code); use a checkpoint from a source you trust"
        )


def check_for_olmo_core(directory: PathLike) -> None:
    """Check a trainer ``stepN/`` or model-only checkpoint before OLMo-core's reader (which
    unpickles without restrictions) opens it: its metadata, sizes, the pickle of every data item
    and the trainer state files. Raises :class:`UnsafeFileError` or :class:`DamagedFileError`."""
    root = Path(directory)
    wdir = root / "model_and_optim" if (root / "model_and_optim").is_dir() else root
    meta = read_dcp_metadata(wdir)
    key = (str(wdir.resolve()), id(meta))
    if key in _CHECKED:
        return
    check_sizes(wdir, meta)
    by_file: Dict[str, set] = {}
    for info in meta.storage_data.values():
        by_file.setdefault(info.relative_path, set()).add((info.offset, info.length))
    for rel, items in sorted(by_file.items()):
        with open(wdir / rel, "rb") as f:
            for offset, length in sorted(items):
                where = f"{wdir / rel} (bytes {offset:,d}+{length:,d})"
                scan_torch_save(_Window(f, offset, length), where)
    for state in sorted((root / "train").glob("rank*.pt")) if (root / "train").is_dir() else []:
        scan_torch_save(str(state), str(state), extra=_TRAINER_STATE_GLOBALS)
    _CHECKED.add(key)


_CHECKED: set = set()  # (directory, its metadata object: cached while the file is unchanged)


# ---- hashes -------------------------------------------------------------------------------------


def sha256_file(path: PathLike, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _sha256_many(files: List[Path]) -> List[str]:
    """SHA-256 of each file, on up to 8 threads (hashlib releases the GIL), 4 MiB at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(sha256_file, files))


def weight_file_digests(directory: PathLike) -> Dict[str, Dict[str, Any]]:
    """Size and SHA-256 of every file of a DCP directory (``.metadata`` and the data files)."""
    d = Path(directory)
    files = [f for f in sorted(d.iterdir())
             if f.is_file() and (f.name == METADATA_FILE or f.suffix == ".distcp")]  # fmt: skip
    return {
        f.name: {"bytes": f.stat().st_size, "sha256": h} for f, h in zip(files, _sha256_many(files))
    }


def check_weight_files(
    directory: PathLike, recorded: Mapping[str, Mapping[str, Any]], *, hashes: bool = False
) -> None:
    """Refuse a DCP directory whose files differ in size (always) or SHA-256 (with ``hashes``)
    from what ``config.json`` recorded when it was written."""
    d = Path(directory)
    for name, want in sorted(recorded.items()):
        file = d / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise DamagedFileError(f"{file} is missing: the checkpoint is incomplete") from None
        if size != want.get("bytes"):
            raise DamagedFileError(
                f"{file} has {size:,d} bytes but was written with {want.get('bytes'):,d}: it is "
                "truncated or changed; copy the checkpoint again"
            )
    if not hashes:
        return
    names = sorted(recorded)
    found = dict(zip(names, _sha256_many([d / n for n in names])))
    for name in names:
        file = d / name
        if found[name] != recorded[name].get("sha256"):
            raise DamagedFileError(
                f"{file} does not have the SHA-256 recorded when it was written: it is corrupt; "
                "copy the checkpoint again"
            )
