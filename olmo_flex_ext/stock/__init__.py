"""Stock OLMo-core MoE checkpoints in and out.

OLMo-core's own MoE models (``MoEConfig`` of type ``default`` or ``dropless``) are read everywhere
a checkpoint is read: :mod:`olmo_flex_ext.checkpoint` converts their expert tensors one at a time
into the variable-width layout with equal widths (:mod:`.state`), and their config into a
:class:`~olmo_flex_ext.nn.moe.VariableMoEConfig` (:mod:`.config`).

- :func:`import_olmo_core`: a stock checkpoint -> ours, stored converted; a trainer checkpoint
  keeps its optimizer state (converted too), step and data position, so the run continues.
- :func:`export_olmo_core`: any checkpoint -> a stock checkpoint of either layout (narrower
  experts zero-padded with ``pad``, widths recorded so that reading it back restores them).

Names are imported on first use so that ``olmo-flex --help`` does not load torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "LAYOUTS": "config",
    "WIDTHS_KEY": "config",
    "ExpertLayout": "config",
    "StockError": "config",
    "stock_from_variable": "config",
    "variable_from_stock": "config",
    "StockConversion": "state",
    "expert_from_stock": "state",
    "expert_to_stock": "state",
    "reading_conversion": "state",
    "writing_conversion": "state",
    "import_olmo_core": "convert",
    "export_olmo_core": "convert",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
