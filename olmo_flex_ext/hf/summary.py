"""``olmo-flex info``: what a checkpoint or transformers directory holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Union

from olmo_core.nn.transformer import TransformerConfig

from ..checkpoint import (
    read_config,
    read_model_config,
    resolve_checkpoint,
    stock_conversion,
    tensor_meta,
    verify_checkpoint,
)
from ..models import describe_model, expert_widths_per_layer
from .config import model_config_from_hf
from .convert import load_hf_config, recorded_widths
from .files import HFDir, is_hf_dir

__all__ = ["summarize", "architecture"]


def architecture(config: TransformerConfig) -> List[str]:
    """Lines describing the shape of a model config, its experts and their parameter counts."""
    block = config.resolved_block_configs[0]
    att = block.sequence_mixer
    rope = getattr(att, "rope", None)
    moe = block.feed_forward_moe
    kind = f"MoE ({block.name})" if moe is not None else f"dense ({block.name})"
    lines = [
        f"architecture: {kind}, d_model {config.d_model}, {config.n_layers} layers, "
        f"{att.n_heads} heads ({att.n_kv_heads or att.n_heads} kv), vocab {config.vocab_size}, "
        f"RoPE theta {rope.theta if rope else '-'}, norm eps {block.layer_norm.eps if block.layer_norm else '-'}"
    ]
    if moe is None:
        ff = block.feed_forward
        lines.append(f"MLP width: {ff.hidden_size if ff else '-'}")
        lines.append(f"total params:  {config.num_params:,d}")
        return lines
    widths = expert_widths_per_layer(config)
    lines.append(f"experts: {len(widths[0])} per layer, top-{moe.router.top_k} routing")
    lines += describe_model(config).splitlines()
    per_expert = [
        3 * config.d_model * sum(layer[e] for layer in widths) for e in range(len(widths[0]))
    ]
    lines.append(
        "expert params: " + ", ".join(f"expert {e} {n:,d}" for e, n in enumerate(per_expert))
    )
    return lines


def summarize(path: Union[str, Path], verify: bool = False) -> str:
    """A multi-line description of a checkpoint (model-only, trainer step, run folder) or of a
    transformers FlexOlmo/Olmo2 directory; with ``verify`` its weight files are checked
    (:func:`~olmo_flex_ext.checkpoint.verify_checkpoint`, or every tensor read) and the last line
    says how."""
    p = Path(path)
    if is_hf_dir(p):
        hf = HFDir.open(p)
        hf_config = load_hf_config(hf)
        widths = recorded_widths(hf_config) if hf_config.model_type == "flex_olmo" else None
        config = model_config_from_hf(hf_config, widths)
        dtypes = Counter(str(d).removeprefix("torch.") for _, d in hf.tensors.values())
        head = [
            f"{p}: transformers {hf_config.model_type} directory, "
            f"{len(set(hf.shards.values()))} safetensors file(s)",
        ]
        stored = f"stored: {len(hf.tensors)} tensors, " + ", ".join(
            f"{n} {d}" for d, n in dtypes.most_common()
        )
        checked = [f"verified: {verify_hf(hf)}"] if verify else []
        return "\n".join(head + architecture(config) + [stored] + checked)
    ckpt = resolve_checkpoint(p)
    config = read_model_config(ckpt)
    made = read_config(ckpt).get("olmo_flex") or {}
    kind = "trainer checkpoint" if (ckpt / "model_and_optim").exists() else "model-only checkpoint"
    head = [f"{ckpt}: {kind}"]
    if made.get("made_by"):
        head[0] += f" (made by {made['made_by']} from {made.get('source', '?')})"
    conversion = stock_conversion(ckpt)
    stock = conversion.describe() if conversion is not None else []
    meta = tensor_meta(ckpt)
    dtypes = Counter(str(d).removeprefix("torch.") for _, d in meta.values())
    stored = f"stored: {len(meta)} tensors, " + ", ".join(
        f"{n} {d}" for d, n in dtypes.most_common()
    )
    checked = [f"verified: {verify_checkpoint(ckpt)}"] if verify else []
    return "\n".join(head + stock + architecture(config) + [stored] + checked)


def verify_hf(hf: HFDir) -> str:
    """Read every tensor of a transformers directory and check that it is finite."""
    import torch

    from ..safe_io import DamagedFileError

    for name in hf.tensors:
        t = hf.load(name)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DamagedFileError(
                f"tensor {name} in {hf.path / hf.shards[name]} has NaN or infinite values"
            )
    return f"{len(hf.tensors)} tensors read and finite"
