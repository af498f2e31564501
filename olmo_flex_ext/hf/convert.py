"""``import_hf`` and ``export_hf``: exact, streaming conversion between transformers FlexOlmo
directories and our model-only checkpoints (see :mod:`.state` for the weight layout)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from ..checkpoint import (
    CheckpointError,
    LazyTensor,
    atomic_output_dir,
    check_output,
    lazy_state,
    read_config,
    read_model_config,
    resolve_checkpoint,
    save_model,
)
from ..progress import progress_bar
from .config import TOKEN_KEYS, WIDTHS_KEY, flex_olmo_hf_config, hf_token_ids, model_config_from_hf
from .files import HFDir, reporting, write_sharded
from .state import cast, check_state, hf_state, to_hf_items

__all__ = [
    "import_hf",
    "export_hf",
    "load_hf_config",
    "checkpoint_token_ids",
    "DEFAULT_MAX_SHARD_BYTES",
    "TOKENIZER_FILES",
]

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

PathLike = Union[str, Path]


def parse_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    if name is None:
        return None
    if name not in _DTYPES:
        raise CheckpointError(f"dtype {name!r} is not one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def load_hf_config(hf: HFDir) -> Any:
    """The transformers config object of an HF directory."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(hf.path), local_files_only=True)
    except Exception as e:  # transformers raises many kinds for a bad config
        raise CheckpointError(f"transformers cannot read {hf.path / 'config.json'}: {e}") from e


def recorded_widths(hf_config: Any) -> Optional[List[List[int]]]:
    """The true expert widths per layer that :func:`export_hf` recorded, if any (validated)."""
    widths = getattr(hf_config, WIDTHS_KEY, None)
    if widths is None:
        return None
    ok = (
        isinstance(widths, list)
        and len(widths) == hf_config.num_hidden_layers
        and all(
            isinstance(layer, list)
            and len(layer) == hf_config.num_experts
            and all(isinstance(w, int) and 0 < w <= hf_config.intermediate_size for w in layer)
            for layer in widths
        )
    )
    if not ok:
        raise CheckpointError(
            f"config.json has an invalid {WIDTHS_KEY} (one list of {hf_config.num_experts} widths "
            f"<= {hf_config.intermediate_size} per layer expected); import with --keep-padding"
        )
    return widths


def import_hf(
    hf_dir: PathLike,
    out: PathLike,
    *,
    overwrite: bool = False,
    dtype: Optional[str] = None,
    keep_padding: bool = False,
) -> Path:
    """Convert a transformers FlexOlmo directory into a model-only checkpoint at ``out``.

    Tensors stream one at a time from the safetensors shards into the DCP. Expert widths recorded
    by :func:`export_hf` (``olmo_flex_expert_widths``) are restored, dropping the zero padding,
    unless ``keep_padding``. ``dtype`` (``float32``/``bfloat16``/``float16``) converts the
    weights; by default they keep the dtype they have on disk.
    """
    check_output(out, overwrite)
    hf = HFDir.open(hf_dir)
    if hf.model_type != "flex_olmo":
        hint = (
            "; to grow a dense Olmo2 model into experts use `olmo-flex upcycle`"
            if (hf.model_type == "olmo2")
            else ""
        )
        raise CheckpointError(
            f"{hf_dir} holds a model of type {hf.model_type!r}, not FlexOlmo (model_type "
            f"'flex_olmo'); import-hf reads FlexOlmo checkpoints{hint}"
        )
    hf_config = load_hf_config(hf)
    widths = None if keep_padding else recorded_widths(hf_config)
    config = model_config_from_hf(hf_config, widths)
    state = hf_state(hf, config)
    check_state(state, config, str(hf.path))
    torch_dtype = parse_dtype(dtype)
    info = {
        "made_by": "olmo-flex import-hf",
        "source": str(Path(hf_dir).resolve()),
        "source_files": sorted(set(hf.shards.values())),
        "hf": hf_token_ids(hf_config),
    }
    with progress_bar(
        f"importing {hf.path.name}", len(state), unit="tensors", transient=True
    ) as advance:
        lazy = {
            k: reporting(k, cast(t, torch_dtype), lambda _: advance()) for k, t in state.items()
        }
        return save_model(out, config, lazy, overwrite=overwrite, info=info)


def checkpoint_token_ids(path: PathLike) -> Dict[str, Any]:
    """Token ids (pad, eos, bos) and context length recorded with a checkpoint: those of the HF
    model it was imported from, else those of the tokenizer of the run that trained it."""
    config = read_config(path)
    recorded = (config.get("olmo_flex") or {}).get("hf")
    if recorded:
        return {k: recorded.get(k) for k in TOKEN_KEYS}
    tokenizer = (config.get("dataset") or {}).get("tokenizer") or {}
    return {k: tokenizer.get(k) for k in ("pad_token_id", "eos_token_id", "bos_token_id")}


def _tokenizer_files(tokenizer: PathLike) -> List[Path]:
    d = Path(tokenizer)
    files = [d / name for name in TOKENIZER_FILES if (d / name).is_file()]
    if not files:
        raise CheckpointError(
            f"{d} has no tokenizer files (expected some of {', '.join(TOKENIZER_FILES[:3])}, ...)"
        )
    return files


def export_hf(
    src: PathLike,
    out: PathLike,
    *,
    tokenizer: Optional[PathLike] = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    dtype: Optional[str] = None,
) -> Path:
    """Write a model-only or trainer checkpoint (or a run folder's latest) as a transformers
    FlexOlmo directory: sharded safetensors, ``config.json``, tokenizer files from
    ``tokenizer``. Narrower experts are zero-padded to the widest, which computes the same
    function; ``dtype`` defaults to that of the stored weights."""
    check_output(out, overwrite)
    ckpt = resolve_checkpoint(src)
    config = read_model_config(ckpt)
    state = lazy_state(ckpt)
    check_state(state, config, f"checkpoint {ckpt}")
    tokenizer_files = _tokenizer_files(tokenizer) if tokenizer is not None else []
    torch_dtype = parse_dtype(dtype) or state["embeddings.weight"].dtype
    hf_config = flex_olmo_hf_config(
        config, dtype=str(torch_dtype).removeprefix("torch."), **checkpoint_token_ids(ckpt)
    )
    items = [(name, cast(t, torch_dtype)) for name, t in to_hf_items(state, config)]
    metadata = {"format": "pt", "olmo_flex_source": str(ckpt.resolve())}
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        with progress_bar(
            f"exporting {ckpt.name}", len(items), unit="tensors", transient=True
        ) as advance:
            write_sharded(
                tmp,
                items,
                max_shard_bytes=max_shard_bytes,
                metadata=metadata,
                on_tensor=lambda _: advance(),
            )
        hf_config.save_pretrained(str(tmp))
        for f in tokenizer_files:
            shutil.copy2(f, tmp / f.name)
    return Path(out)


def hf_lazy_state(hf_dir: PathLike) -> "tuple[Any, Any, Dict[str, LazyTensor]]":
    """(transformers config, our model config, lazy state) of an HF FlexOlmo or Olmo2 directory."""
    hf = HFDir.open(hf_dir)
    hf_config = load_hf_config(hf)
    widths = recorded_widths(hf_config) if hf.model_type == "flex_olmo" else None
    config = model_config_from_hf(hf_config, widths)
    state = hf_state(hf, config)
    check_state(state, config, str(hf.path))
    return hf_config, config, state
