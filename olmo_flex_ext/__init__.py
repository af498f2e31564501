"""olmo-flex-ext: prune, distill and compose FlexOlmo experts of any width on OLMo-core."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from olmo_core.nn.transformer import Transformer


def load_model(path: str, **kwargs) -> "Transformer":
    """An OLMo-core ``Transformer`` (eval mode; CPU and float32 unless ``device=``/``dtype=``)
    from a model-only checkpoint, a trainer ``stepN/`` directory or a run folder; see
    :func:`olmo_flex_ext.checkpoint.load_model`."""
    from .checkpoint import load_model as _load_model

    return _load_model(path, **kwargs)


__all__ = ["load_model", "__version__"]
