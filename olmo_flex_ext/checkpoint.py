"""Model-only checkpoints and :func:`load_model`.

A model-only checkpoint is a directory with ``config.json`` (the model config under ``"model"``,
as OLMo-core's ``as_config_dict()`` writes it) and a torch DCP of ``{"model": state_dict}``, so it
also works as an OLMo-core ``load_path``. Trainer checkpoints (``save_folder/stepN/``) already
have the same ``config.json`` next to ``model_and_optim/``.

:func:`save_model` writes atomically (temp dir, then rename) and can stream: values may be
:class:`LazyTensor` s that are only materialised one at a time while the DCP is written, so
converting or pruning a 7B checkpoint needs memory for about one tensor, not the model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.distributed.checkpoint as dcp
from olmo_core.distributed.checkpoint import get_checkpoint_metadata, load_keys
from olmo_core.nn.transformer import Transformer, TransformerConfig
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import WriteItem

from .errors import UserError

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
    "iter_tensors",
    "atomic_output_dir",
]

CONFIG_FILE = "config.json"
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
    def __init__(self, lazy: Mapping[str, LazyTensor]):
        super().__init__()
        self._lazy = lazy

    def resolve_data(self, write_item: WriteItem):
        lazy = self._lazy.get(write_item.index.fqn)
        if lazy is None:
            return super().resolve_data(write_item)
        tensor = lazy.load()
        if tuple(tensor.shape) != tuple(lazy.shape) or tensor.dtype != lazy.dtype:
            raise CheckpointError(
                f"tensor {write_item.index.fqn} came out {tuple(tensor.shape)} {tensor.dtype}, "
                f"expected {lazy.shape} {lazy.dtype}"
            )
        return tensor.contiguous()


class atomic_output_dir:
    """Context manager yielding a temp dir next to ``out`` that becomes ``out`` on success.

    On error the temp dir is removed and ``out`` is left as it was. An existing ``out`` is an
    error unless ``overwrite``; then it is replaced only after the new one is complete.
    """

    def __init__(self, out: Union[str, Path], overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.tmp: Optional[Path] = None

    def __enter__(self) -> Path:
        if self.out.exists() and not self.overwrite:
            raise CheckpointError(
                f"output {self.out} already exists; choose another path or pass --overwrite"
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


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
    lazy = {MODEL_PREFIX + k: v for k, v in state.items() if isinstance(v, LazyTensor)}
    to_save = {
        k: (v.placeholder() if isinstance(v, LazyTensor) else v.detach().cpu())
        for k, v in state.items()
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        # One file per tensor: torch's writer keeps every tensor of a file alive until the file is
        # closed (it collects them for its safetensors format), so one file per rank would hold the
        # whole model in memory and defeat streaming.
        writer = dcp.FileSystemWriter(str(tmp), thread_count=1, single_file_per_rank=False)
        dcp.save({"model": to_save}, storage_writer=writer, planner=_LazySavePlanner(lazy), no_dist=True)
        config: Dict[str, Any] = {"model": model_config.as_config_dict()}
        if info:
            config["olmo_flex"] = info
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return Path(out)


_STEP_RE = re.compile(r"^step(\d+)$")


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """The checkpoint directory for ``path``: a model-only checkpoint, a trainer ``stepN/``
    directory, or a run's save folder (its latest ``stepN/``)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if (p / CONFIG_FILE).exists() and ((p / ".metadata").exists() or (p / "model_and_optim").exists()):
        return p
    steps = sorted(
        (int(m.group(1)), c)
        for c in p.iterdir()
        if (m := _STEP_RE.match(c.name)) and (c / CONFIG_FILE).exists()
    ) if p.is_dir() else []
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
        return json.loads((p / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p / CONFIG_FILE} is not valid JSON ({e})") from e


def read_model_config(path: Union[str, Path]) -> TransformerConfig:
    """The model config stored with a checkpoint."""
    config = read_config(path)
    if "model" not in config:
        raise CheckpointError(f"{resolve_checkpoint(path) / CONFIG_FILE} has no 'model' entry")
    return TransformerConfig.from_dict(config["model"])


def tensor_shapes(path: Union[str, Path]) -> Dict[str, Tuple[int, ...]]:
    """Parameter name -> shape for the model weights of a checkpoint, read from DCP metadata."""
    meta = get_checkpoint_metadata(str(weights_dir(path)))
    out = {}
    for key, m in meta.state_dict_metadata.items():
        if key.startswith(MODEL_PREFIX) and hasattr(m, "size"):
            out[key[len(MODEL_PREFIX):]] = tuple(m.size)
    return out


def iter_tensors(path: Union[str, Path], names: Iterable[str]) -> Iterator[Tuple[str, torch.Tensor]]:
    """Load the named model tensors of a checkpoint one at a time (for streaming tools)."""
    wdir = str(weights_dir(path))
    for name in names:
        (tensor,) = load_keys(wdir, [MODEL_PREFIX + name])
        yield name, tensor


def load_state_dict(model: Transformer, path: Union[str, Path]) -> None:
    """Load a checkpoint's weights into ``model`` in place (shapes must match)."""
    from olmo_core.distributed.checkpoint import load_model_and_optim_state

    wdir = weights_dir(path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = tensor_shapes(path)
    for k, shape in expected.items():
        if k not in found:
            raise CheckpointError(f"checkpoint {wdir} has no tensor {k}: it is for another model")
        if found[k] != shape:
            raise CheckpointError(
                f"checkpoint {wdir} has {k} with shape {found[k]} but the model expects {shape}: "
                "the checkpoint's config.json does not describe its weights"
            )
    load_model_and_optim_state(str(wdir), model)


def load_model(path: Union[str, Path]) -> Transformer:
    """An OLMo-core ``Transformer`` on CPU in float32 and eval mode from a checkpoint directory."""
    model = read_model_config(path).build(init_device="cpu")
    load_state_dict(model, path)
    return model.float().eval()


def list_steps(save_folder: Union[str, Path]) -> List[int]:
    """Steps of the trainer checkpoints in a run folder, ascending."""
    p = Path(save_folder)
    if not p.is_dir():
        return []
    return sorted(int(m.group(1)) for c in p.iterdir() if (m := _STEP_RE.match(c.name)))
