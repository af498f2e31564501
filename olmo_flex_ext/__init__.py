"""olmo-flex-ext: prune, distill and compose FlexOlmo experts of any width on OLMo-core."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from olmo_core.nn.transformer import Transformer


def load_model(path: str) -> "Transformer":
    """An OLMo-core ``Transformer`` (CPU, float32, eval mode) from a model-only checkpoint or a
    trainer ``stepN/`` directory; see :func:`olmo_flex_ext.checkpoint.load_model`."""
    from .checkpoint import load_model as _load_model

    return _load_model(path)


__all__ = ["load_model", "__version__"]
