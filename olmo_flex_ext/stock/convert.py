"""``import_olmo_core`` and ``export_olmo_core``: stock OLMo-core MoE checkpoints to ours and back.

Both stream the checkpoint's DCP one tensor at a time and convert every entry that belongs to an
expert weight of a stock layer: the weight (``model.<name>``) and each optimizer statistic of the
same shape (``optim.state.<name>.exp_avg`` ...); scalars such as AdamW's ``step`` and every other
entry are copied. A trainer checkpoint (``stepN/``) keeps the rest of its files (trainer state with
step, data position and RNG states, which are copied, never unpickled) and becomes ``OUT/stepN/``,
so that a run with ``--trainer.save_folder=OUT`` continues from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from ..checkpoint import (
    CONFIG_FILE,
    WEIGHT_FILES,
    LazyTensor,
    atomic_output_dir,
    check_output,
    checkpoint_inputs,
    read_config,
    read_dcp_entry,
    read_model_config,
    resolve_checkpoint,
    stock_conversion,
    write_dcp,
)
from ..nn.moe import expert_weight
from ..outputs import check_not_input
from ..progress import progress_bar
from ..safe_io import read_dcp_metadata, weight_file_digests
from .config import WIDTHS_KEY, StockError, recorded_widths
from .state import StockConversion, writing_conversion

__all__ = ["import_olmo_core", "export_olmo_core", "convert_checkpoint"]

PathLike = Union[str, Path]
TRAINER_WEIGHTS = "model_and_optim"
MODEL = "model."
OPTIM_STATE = "optim.state."

Transform = Callable[[str, torch.Tensor], torch.Tensor]
Reshape = Callable[[str, Tuple[int, ...]], Tuple[int, ...]]


def _param(fqn: str) -> Optional[str]:
    """The expert weight an entry belongs to (its weight or an optimizer statistic of it)."""
    if fqn.startswith(MODEL):
        name = fqn[len(MODEL) :]
    elif fqn.startswith(OPTIM_STATE):
        name = fqn[len(OPTIM_STATE) :].rpartition(".")[0]
    else:
        return None
    return name if expert_weight(name) is not None else None


def _convert_dcp(
    src: Path, out: Path, reshape: Reshape, transform: Transform, advance: Callable[..., None]
) -> None:
    """Write the DCP ``src`` to ``out`` with every expert entry converted."""
    meta = read_dcp_metadata(src).state_dict_metadata
    stored = {
        fqn[len(MODEL) :]: tuple(m.size)
        for fqn, m in meta.items()
        if fqn.startswith(MODEL) and hasattr(m, "size")
    }
    state: Dict[str, Any] = {}
    for fqn, m in meta.items():
        name = _param(fqn)
        if not hasattr(m, "size"):  # a plain value (e.g. optimizer hyperparameters)
            state[fqn] = read_dcp_entry(src, fqn, m)
            continue
        shape = tuple(m.size)
        convert = name is not None and len(shape) > 0
        if convert and shape != stored.get(name):
            raise StockError(
                f"{src}: {fqn} has shape {shape}, not that of the weight {name} "
                f"{stored.get(name)}; optimizer state of this shape cannot be converted"
            )

        def load(fqn=fqn, m=m, name=name, convert=convert) -> torch.Tensor:
            tensor = read_dcp_entry(src, fqn, m)
            tensor = transform(name, tensor) if convert else tensor
            advance()
            return tensor

        new_shape = reshape(name, shape) if convert else shape  # type: ignore[arg-type]
        state[fqn] = LazyTensor(new_shape, m.properties.dtype, load)
    write_dcp(out, state)


def convert_checkpoint(
    src: PathLike,
    out: PathLike,
    *,
    model: Dict[str, Any],
    info: Dict[str, Any],
    reshape: Reshape,
    transform: Transform,
    overwrite: bool = False,
    what: str = "converting",
) -> Path:
    """Write the checkpoint ``src`` (model-only, trainer ``stepN/`` or run folder) to ``out`` with
    the expert entries converted and ``model`` (a config dict) as its model config; ``info`` is
    recorded under ``"olmo_flex"`` in ``config.json``. A model-only checkpoint becomes a model-only
    checkpoint ``out``; a trainer checkpoint becomes ``out/stepN/`` with its other files copied."""
    ckpt = resolve_checkpoint(src)
    check_not_input(out, checkpoint_inputs(src))
    check_output(out, overwrite)
    config = read_config(ckpt)
    replaced = ("made_by", "source", "layout", "stock_layout", WIDTHS_KEY)
    kept = {k: v for k, v in (config.get("olmo_flex") or {}).items() if k not in replaced}
    config = {**config, "model": model, "olmo_flex": {**kept, **info}}
    config.pop(WEIGHT_FILES, None)  # the source's; the new files are recorded below
    trainer = (ckpt / TRAINER_WEIGHTS).is_dir()
    src_dcp = ckpt / TRAINER_WEIGHTS if trainer else ckpt
    entries = read_dcp_metadata(src_dcp).state_dict_metadata.values()
    total = sum(1 for m in entries if hasattr(m, "size"))
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        target = tmp / ckpt.name if trainer else tmp
        target.mkdir(exist_ok=True)
        with progress_bar(f"{what} {ckpt.name}", total, unit="tensors", transient=True) as advance:
            dcp_out = target / TRAINER_WEIGHTS if trainer else target
            _convert_dcp(src_dcp, dcp_out, reshape, transform, advance)
        if trainer:
            for item in ckpt.iterdir():
                if item.name in (TRAINER_WEIGHTS, CONFIG_FILE):
                    continue
                if item.is_dir():
                    shutil.copytree(item, target / item.name, symlinks=True)
                else:
                    shutil.copy2(item, target / item.name)
        config[WEIGHT_FILES] = weight_file_digests(dcp_out)
        (target / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return Path(out)


def import_olmo_core(src: PathLike, out: PathLike, *, overwrite: bool = False) -> Path:
    """Convert a stock OLMo-core MoE checkpoint into ours (variable-width experts, equal widths
    unless a padded export recorded others). A trainer checkpoint keeps its optimizer state (the
    moments converted like the weights), step and data position: train with
    ``--trainer.save_folder=OUT`` to continue the run."""
    ckpt = resolve_checkpoint(src)
    conversion = stock_conversion(ckpt)
    if conversion is None:
        raise StockError(
            f"{ckpt} is not a stock OLMo-core MoE checkpoint (its config.json has no "
            "MoEConfig layers); every command reads it as it is"
        )
    info = {
        "made_by": "olmo-flex import-olmo-core",
        "source": str(ckpt.resolve()),
        "stock_layout": sorted({layer.layout for layer in conversion.layers.values()}),
    }
    return convert_checkpoint(
        ckpt,
        out,
        model=conversion.config.as_config_dict(),
        info=info,
        reshape=conversion.read_shape,
        transform=conversion.read,
        overwrite=overwrite,
        what="importing",
    )


def export_olmo_core(
    src: PathLike, out: PathLike, *, layout: str, pad: bool = False, overwrite: bool = False
) -> Path:
    """Write any checkpoint (ours, or stock OLMo-core of either layout) as a stock OLMo-core MoE
    checkpoint of type ``layout`` (``default`` or ``dropless``) that OLMo-core loads into its own
    ``MoEConfig`` model. Experts narrower than their layer's widest are zero-padded with ``pad``
    (the same function; the true widths are recorded so that reading it back restores them) and
    refused without. A trainer checkpoint keeps its optimizer state, converted the same way."""
    ckpt = resolve_checkpoint(src)
    reading = stock_conversion(ckpt)
    writing = writing_conversion(read_model_config(ckpt), layout, pad=pad)
    info: Dict[str, Any] = {
        "made_by": "olmo-flex export-olmo-core",
        "source": str(ckpt.resolve()),
        "layout": layout,
    }
    widths = recorded_widths(writing.layers, writing.stock.n_layers)
    if widths is not None:
        info[WIDTHS_KEY] = widths
    reshape, transform = _through(reading, writing)
    return convert_checkpoint(
        ckpt,
        out,
        model=writing.stock.as_config_dict(),
        info=info,
        reshape=reshape,
        transform=transform,
        overwrite=overwrite,
        what="exporting",
    )


def _through(
    reading: Optional[StockConversion], writing: StockConversion
) -> Tuple[Reshape, Transform]:
    """Read (from a stock layout, if the source has one), then write."""
    if reading is None:
        return writing.write_shape, writing.write

    def reshape(name: str, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return writing.write_shape(name, reading.read_shape(name, shape))

    def transform(name: str, tensor: torch.Tensor) -> torch.Tensor:
        return writing.write(name, reading.read(name, tensor))

    return reshape, transform
