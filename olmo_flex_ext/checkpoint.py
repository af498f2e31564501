"""Model-only checkpoints and :func:`load_model`.

A model-only checkpoint is a directory with ``config.json`` (the model config under ``"model"``,
as OLMo-core's ``as_config_dict()`` writes it) and a torch DCP of ``{"model": state_dict}``, so it
also works as an OLMo-core ``load_path``. Trainer checkpoints (``save_folder/stepN/``) already
have the same ``config.json`` next to ``model_and_optim/``.

:func:`save_model` writes atomically (temp dir, then rename) and can stream: values may be
:class:`LazyTensor` s that are only materialised one at a time while the DCP is written, so
converting or pruning a 7B checkpoint needs memory for about one tensor, not the model. It
records the size and SHA-256 of every weight file in ``config.json`` (``"weight_files"``).

Nothing here unpickles a file without restrictions: DCP metadata and tensors are read through
:mod:`olmo_flex_ext.safe_io`, which also checks the weight files' sizes on every read (their
hashes with :func:`verify_checkpoint`).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.distributed.checkpoint as dcp
from olmo_core.nn.transformer import Transformer, TransformerConfig
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import WriteItem

from .atomic import move_into_place
from .errors import UserError
from .outputs import claim_output
from .safe_io import (
    DamagedFileError,
    check_sizes,
    check_weight_files,
    first_user_error,
    read_dcp_metadata,
    safe_dcp_load,
    weight_file_digests,
)
from .stock.config import WIDTHS_KEY
from .stock.state import StockConversion, reading_conversion

__all__ = [
    "CONFIG_FILE",
    "LazyTensor",
    "CheckpointError",
    "save_model",
    "load_model",
    "read_config",
    "read_model_config",
    "resolve_checkpoint",
    "weights_dir",
    "tensor_shapes",
    "tensor_meta",
    "iter_tensors",
    "lazy_state",
    "check_shapes",
    "atomic_output_dir",
    "check_output",
    "write_dcp",
    "read_dcp_entry",
    "stored_model_config",
    "stock_conversion",
    "verify_checkpoint",
    "checkpoint_inputs",
    "open_weights",
]

CONFIG_FILE = "config.json"
WEIGHT_FILES = "weight_files"
MODEL_PREFIX = "model."


class CheckpointError(UserError):
    """A checkpoint path that cannot be used, with a message that says why and what to do."""


@dataclass
class LazyTensor:
    """A tensor described by shape and dtype whose data is produced by ``load()`` on demand."""

    shape: Tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]

    def placeholder(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device="meta")


TensorLike = Union[torch.Tensor, LazyTensor]


class _LazySavePlanner(DefaultSavePlanner):
    # DCP asks the planner for each tensor's data right before writing it; resolving lazy tensors
    # there lets one tensor at a time live in memory. torch has no public streaming writer.
    #
    # torch's FileSystemWriter (2.13) keeps a reference to every tensor it has written until the
    # file is closed (it only needs them for its safetensors format), which would hold the whole
    # model. So the storage of the previously resolved lazy tensor is released when the next one
    # is requested: with the serial loader (``per_thread_copy_ahead=0`` in save_model) a tensor is
    # written before the next one is resolved.
    def __init__(self, lazy: Mapping[str, LazyTensor]):
        super().__init__()
        self._lazy = lazy
        self._previous: Optional[torch.Tensor] = None

    def release(self) -> None:
        if self._previous is not None:
            self._previous.untyped_storage().resize_(0)
            self._previous = None

    def resolve_data(self, write_item: WriteItem):
        lazy = self._lazy.get(write_item.index.fqn)
        if lazy is None:
            return super().resolve_data(write_item)
        self.release()
        tensor = lazy.load()
        if tuple(tensor.shape) != tuple(lazy.shape) or tensor.dtype != lazy.dtype:
            raise CheckpointError(
                f"tensor {write_item.index.fqn} came out {tuple(tensor.shape)} {tensor.dtype}, "
                f"expected {lazy.shape} {lazy.dtype}"
            )
        # A copy with storage of its own, so that releasing it frees nobody else's tensor
        # (load() may return a view or a tensor its caller keeps).
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        self._previous = tensor
        return tensor


def check_output(out: Union[str, Path], overwrite: bool = False) -> None:
    """Raise :class:`CheckpointError` if ``out`` exists and may not be replaced (commands claim
    their outputs with :func:`olmo_flex_ext.outputs.claim_output`, which checks this and more)."""
    if Path(out).exists() and not overwrite:
        raise CheckpointError(
            f"output {out} already exists; choose another path or pass --overwrite"
        )


def checkpoint_inputs(path: Union[str, Path]) -> List[Path]:
    """The paths a checkpoint argument stands for (as given, and the ``stepN/`` it resolves to),
    which no output may be, contain or lie inside."""
    return [Path(path), resolve_checkpoint(path)]


class atomic_output_dir:
    """Context manager yielding a temp dir next to ``out`` that becomes ``out`` on success.

    On error the temp dir is removed and ``out`` is left as it was. An existing ``out`` is an
    error unless ``overwrite``; then it is replaced only after the new one is complete. ``out``
    is claimed (:func:`~olmo_flex_ext.outputs.claim_output`) unless this process already holds it.
    """

    def __init__(self, out: Union[str, Path], overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.tmp: Optional[Path] = None
        self._claim: Any = None

    def __enter__(self) -> Path:
        check_output(self.out, self.overwrite)
        self._claim = claim_output(self.out, overwrite=self.overwrite, kind="dir")
        self._claim.__enter__()
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        except BaseException:
            self._claim.__exit__(None, None, None)
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return
            try:
                move_into_place(self.tmp, self.out, overwrite=self.overwrite)
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        finally:
            self._claim.__exit__(None, None, None)


def write_dcp(directory: Union[str, Path], state: Mapping[str, Any]) -> None:
    """Write ``state`` (nested dicts of tensors, :class:`LazyTensor` s and plain values; dotted
    keys are fully qualified names) as a torch DCP in ``directory``, one lazy tensor in memory at
    a time."""
    lazy: Dict[str, LazyTensor] = {}

    def placeholders(node: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in node.items():
            if isinstance(v, Mapping):
                out[k] = placeholders(v, f"{prefix}{k}.")
            elif isinstance(v, LazyTensor):
                lazy[prefix + k] = v
                out[k] = v.placeholder()
            else:
                out[k] = v.detach().cpu() if isinstance(v, torch.Tensor) else v
        return out

    to_save = placeholders(state, "")
    # One file per tensor: with one file per rank, memory still grew while streaming tensors
    # read from another checkpoint (a 1.5 GB merge: +560 MB anonymous memory, flat with this).
    writer = dcp.FileSystemWriter(
        str(directory), thread_count=1, single_file_per_rank=False, per_thread_copy_ahead=0
    )
    planner = _LazySavePlanner(lazy)
    try:
        dcp.save(to_save, storage_writer=writer, planner=planner, no_dist=True)
        planner.release()
    except CheckpointException as e:
        # DCP wraps errors raised while producing a lazy tensor; surface the user's error.
        raise first_user_error(e) or e from None


def save_model(
    out: Union[str, Path],
    model_config: TransformerConfig,
    state: Mapping[str, TensorLike],
    *,
    overwrite: bool = False,
    info: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a model-only checkpoint (``config.json`` + DCP ``{"model": state}``) atomically.

    :param state: Parameter name -> tensor or :class:`LazyTensor` (streamed one at a time).
    :param info: Extra JSON-able provenance stored under ``"olmo_flex"`` in ``config.json``.
    """
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        write_dcp(tmp, {"model": dict(state)})
        config: Dict[str, Any] = {"model": model_config.as_config_dict()}
        if info:
            config["olmo_flex"] = info
        config[WEIGHT_FILES] = weight_file_digests(tmp)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return Path(out)


_STEP_RE = re.compile(r"^step(\d+)$")


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """The checkpoint directory for ``path``: a model-only checkpoint, a trainer ``stepN/``
    directory, or a run's save folder (its latest ``stepN/``)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if (p / CONFIG_FILE).exists() and (
        (p / ".metadata").exists() or (p / "model_and_optim").exists()
    ):
        return p
    steps = (
        sorted(
            (int(m.group(1)), c)
            for c in p.iterdir()
            if (m := _STEP_RE.match(c.name)) and (c / CONFIG_FILE).exists()
        )
        if p.is_dir()
        else []
    )
    if steps:
        return steps[-1][1]
    raise CheckpointError(
        f"{p} is not a checkpoint: expected config.json plus a DCP (model-only checkpoint), "
        "a trainer stepN/ directory, or a run folder that contains stepN/ directories"
    )


def weights_dir(path: Union[str, Path]) -> Path:
    """The DCP directory inside a resolved checkpoint (``model_and_optim/`` for trainer ones)."""
    p = resolve_checkpoint(path)
    return p / "model_and_optim" if (p / "model_and_optim").exists() else p


def read_config(path: Union[str, Path]) -> Dict[str, Any]:
    """The whole ``config.json`` of a checkpoint."""
    p = resolve_checkpoint(path)
    try:
        config = json.loads((p / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p / CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{p / CONFIG_FILE} is not a checkpoint config (a JSON object)")
    return config


def read_model_config(path: Union[str, Path]) -> TransformerConfig:
    """The model config of a checkpoint (for a stock OLMo-core MoE checkpoint: the variable-width
    config it is read as, see :func:`stock_conversion`)."""
    conversion = stock_conversion(path)
    return conversion.config if conversion is not None else stored_model_config(path)


def open_weights(path: Union[str, Path]) -> Tuple[Path, Any]:
    """The DCP directory of a checkpoint and its metadata, read safely, with the weight files'
    sizes checked against the metadata and against ``config.json``'s record."""
    p = resolve_checkpoint(path)
    wdir = weights_dir(p)
    meta = read_dcp_metadata(wdir)
    key = (str(wdir.resolve()), id(meta))
    if key not in _SIZES_CHECKED:
        check_sizes(wdir, meta)
        check_weight_files(wdir, read_config(p).get(WEIGHT_FILES) or {})
        _SIZES_CHECKED.add(key)
    return wdir, meta


_SIZES_CHECKED: set = set()


def verify_checkpoint(path: Union[str, Path]) -> str:
    """Check every weight file of a checkpoint: against the SHA-256 recorded when it was written
    (model-only checkpoints), or, without a record (trainer checkpoints), by reading every
    model tensor and checking that it is finite. Returns what was checked."""
    p = resolve_checkpoint(path)
    wdir, _ = open_weights(p)
    recorded = read_config(p).get(WEIGHT_FILES)
    if recorded:
        check_weight_files(wdir, recorded, hashes=True)
        return f"{len(recorded)} weight files match their recorded SHA-256"
    names = list(tensor_meta(p))
    for name, tensor in iter_tensors(p, names):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise DamagedFileError(f"tensor {name} of {wdir} has {bad:,d} NaN or infinite values")
    return f"{len(names)} tensors read and finite (no recorded hashes)"


def tensor_meta(path: Union[str, Path]) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """Parameter name -> (shape, dtype) for the model weights of a checkpoint, from DCP metadata
    (the shapes they are read as)."""
    conversion = stock_conversion(path)
    _, meta = open_weights(path)
    out = {}
    for key, m in meta.state_dict_metadata.items():
        if key.startswith(MODEL_PREFIX) and hasattr(m, "size"):
            name, shape = key[len(MODEL_PREFIX) :], tuple(m.size)
            if conversion is not None:
                shape = conversion.read_shape(name, shape)
            out[name] = (shape, m.properties.dtype)
    return out


def tensor_shapes(path: Union[str, Path]) -> Dict[str, Tuple[int, ...]]:
    """Parameter name -> shape for the model weights of a checkpoint, read from DCP metadata."""
    return {name: shape for name, (shape, _) in tensor_meta(path).items()}


def iter_tensors(
    path: Union[str, Path], names: Iterable[str]
) -> Iterator[Tuple[str, torch.Tensor]]:
    """Load the named model tensors of a checkpoint one at a time (for streaming tools); the
    expert tensors of a stock OLMo-core MoE checkpoint are converted as they are read.

    Works inside a process group too (each call reads on this rank only), so a training callback
    on rank 0 can stream a checkpoint while the other ranks wait.
    """
    conversion = stock_conversion(path)
    wdir, metadata = open_weights(path)
    meta = metadata.state_dict_metadata
    for name in names:
        m = meta.get(MODEL_PREFIX + name)
        if m is None or not hasattr(m, "size"):
            raise CheckpointError(f"checkpoint {wdir} has no tensor {name}")
        tensor = read_dcp_entry(wdir, MODEL_PREFIX + name, m)
        yield name, tensor if conversion is None else conversion.read(name, tensor)


def read_dcp_entry(dcp_dir: Union[str, Path], fqn: str, meta: Any) -> Any:
    """One entry of a DCP (``meta``: its storage metadata): a tensor, or a plain value, read on
    this rank only (also inside a process group) through :class:`~olmo_flex_ext.safe_io.
    SafeDCPReader`, so nothing in the file runs."""
    if hasattr(meta, "size"):
        tensor = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        safe_dcp_load({fqn: tensor}, dcp_dir, collective=False)
        return tensor
    state: Dict[str, Any] = {fqn: None}
    safe_dcp_load(state, dcp_dir, collective=False)
    return state[fqn]


# ---- stock OLMo-core MoE checkpoints (see olmo_flex_ext.stock) -------------------------------
# A checkpoint of OLMo-core's own MoE model (MoEConfig, default or dropless type) is read as the
# variable-width model: read_model_config gives the converted config, and tensor_meta,
# iter_tensors, lazy_state and load_model convert each expert tensor as it is read. Which
# conversion applies comes from config.json, never from tensor shapes.


def stored_model_config(path: Union[str, Path]) -> TransformerConfig:
    """The model config exactly as a checkpoint stores it (a stock MoE config stays stock)."""
    config = read_config(path)
    where = resolve_checkpoint(path) / CONFIG_FILE
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{where} has no 'model' entry")
    try:
        return TransformerConfig.from_dict(config["model"])
    except UserError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{where} holds no valid model config ({type(e).__name__}: {e})"
        ) from None


def stock_conversion(path: Union[str, Path]) -> Optional[StockConversion]:
    """How a stock OLMo-core MoE checkpoint is read as the variable-width model (raises for
    features that model does not have); ``None`` for our checkpoints and dense models."""
    recorded = (read_config(path).get("olmo_flex") or {}).get(WIDTHS_KEY)
    where = f"checkpoint {resolve_checkpoint(path)}"
    return reading_conversion(stored_model_config(path), recorded, where)


def _set_full_tensor(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full (unsharded) tensor into a parameter, which may be a sharded DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(target, DTensor):
        shard = distribute_tensor(full.to(target.dtype), target.device_mesh, target.placements)
        target.to_local().copy_(shard.to_local())
    else:
        target.copy_(full)


# ---- end of the stock section -----------------------------------------------------------------


def lazy_state(path: Union[str, Path]) -> Dict[str, LazyTensor]:
    """A checkpoint's model weights as :class:`LazyTensor` s that each load one tensor on demand."""

    def loader(name: str) -> Callable[[], torch.Tensor]:
        def load() -> torch.Tensor:
            ((_, tensor),) = iter_tensors(path, [name])
            return tensor

        return load

    return {
        name: LazyTensor(shape, dtype, loader(name))
        for name, (shape, dtype) in tensor_meta(path).items()
    }


def check_shapes(path: Union[str, Path], expected: Mapping[str, Tuple[int, ...]]) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint has every expected tensor with the
    expected shape (``expected``: name -> shape, e.g. from a model built on the meta device)."""
    wdir = weights_dir(path)
    found = tensor_shapes(path)
    for k, shape in expected.items():
        if k not in found:
            raise CheckpointError(f"checkpoint {wdir} has no tensor {k}: it is for another model")
        if found[k] != tuple(shape):
            raise CheckpointError(
                f"checkpoint {wdir} has {k} with shape {found[k]} but the model expects "
                f"{tuple(shape)}: the checkpoint was made for a model of another shape"
            )


def load_state_dict(model: Transformer, path: Union[str, Path]) -> None:
    """Load a checkpoint's weights into ``model`` in place (shapes must match); collective when
    a process group exists, and ``model`` may be sharded (FSDP). Stock OLMo-core MoE checkpoints
    whose stored layout differs from ours are converted one tensor at a time.

    Mirrors OLMo-core 3.0 ``load_model_and_optim_state`` (its model part, with the same
    state-dict options); changed: the checkpoint is read through
    :class:`~olmo_flex_ext.safe_io.SafeDCPReader` (OLMo-core's reader unpickles metadata and
    tensors without restrictions)."""
    from torch.distributed.checkpoint import state_dict as dist_cp_sd

    check_shapes(path, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    conversion = stock_conversion(path)
    if conversion is None or conversion.identity:
        wdir, _ = open_weights(path)
        options = dist_cp_sd.StateDictOptions(full_state_dict=False, cpu_offload=True)
        state = {"model": dist_cp_sd.get_model_state_dict(model, options=options)}
        safe_dcp_load(state, wdir)
        dist_cp_sd.set_model_state_dict(
            model, state["model"], options=dist_cp_sd.StateDictOptions(strict=True)
        )
        return
    params = model.state_dict()
    # Expert weights kept as row blocks (expert-only training) appear in the state dict as a
    # fused copy or view; they are written through their layer.
    blocks = {f"{prefix.replace('._checkpoint_wrapped_module', '')}.{w}": (mlp, w)
              for prefix, mlp in model.named_modules()
              if getattr(mlp, "frozen_experts", None) for w in ("w1", "w2", "w3")}  # fmt: skip
    with torch.no_grad():
        for name, tensor in iter_tensors(path, list(params)):
            if name in blocks:
                mlp, weight = blocks[name]
                mlp.set_full_weight(weight, tensor)
            else:
                _set_full_tensor(params[name], tensor)


def load_model(
    path: Union[str, Path],
    *,
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
) -> Transformer:
    """An OLMo-core ``Transformer`` in eval mode from a checkpoint directory, on ``device``
    (default CPU) with weights in ``dtype`` (default float32).

    The model is built on the meta device and its weights are read straight into their place, so
    nothing is initialised only to be overwritten (a 7B teacher loads at the cost of its weights);
    a model with non-persistent buffers is built on ``device`` instead.
    """
    config = read_model_config(path)
    model = config.build(init_device="meta")
    saved = set(model.state_dict())
    if any(name not in saved for name, _ in model.named_buffers()):
        # a non-persistent buffer is not in the checkpoint: it needs its constructor's values
        model = config.build(init_device=str(device or "cpu"))
    else:
        model.to_empty(device=device or "cpu")
    load_state_dict(model, path)
    return model.to(dtype=dtype or torch.float32).eval()


def list_steps(save_folder: Union[str, Path]) -> List[int]:
    """Steps of the trainer checkpoints in a run folder, ascending."""
    p = Path(save_folder)
    if not p.is_dir():
        return []
    return sorted(int(m.group(1)) for c in p.iterdir() if (m := _STEP_RE.match(c.name)))
