"""A new code expert for the 7B FlexOlmo, trained apart from every other expert: 50B tokens of
code data (``$OLMO_FLEX_DATA_ROOT/code/*.npy``), only the new expert's MLP rows train; its domain
router (``olmo-flex domain-router``) stays fixed. Start from the public model upcycled with that
router (``$OLMO_FLEX_DATA_ROOT/checkpoints/upcycled-code``, see
:mod:`olmo_flex_ext.recipes.flex_expert`); merge the result with other experts (``olmo-flex
merge``). bfloat16 compute, compile, steps of 256 x 4096 tokens (8 to 256 GPUs; the memory plan
is in docs/performance.md).

    torchrun --nproc-per-node=8 -m olmo_flex_ext.launch train_configs/flex_code_expert.py
"""

from olmo_flex_ext.recipes import flex_expert_7b


def build_config():
    return flex_expert_7b("code")
