"""Code that mirrors an OLMo-core function says so, and fails here, loudly, when that function
changes: its parameters (names, kinds, defaults) and its source are recorded as of OLMo-core 3.0.

When a test here fails after upgrading OLMo-core, read the new version of the function, carry
its changes into the mirror, then record the new parameters and source hash below.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest

# (mirror in this project, OLMo-core function, its parameters, sha256 of its source, first 16)
MIRRORS = [
    (
        "olmo_flex_ext.distill.train_module:KDTrainModule.train_batch",
        "olmo_core.train.train_module:TransformerTrainModule.train_batch",
        ["self", "batch", "dry_run=False"],
        "a225af3ee4f41f57",
    ),
    (
        "olmo_flex_ext.distill.train_module:KDTrainModuleConfig.build",
        "olmo_core.train.train_module:TransformerTrainModuleConfig.build",
        ["self", "model", "device=None", "eval_only=False"],
        "54675ee655599ac5",
    ),
    (
        "olmo_flex_ext.distill.data:TopKFSLDatasetConfig.build",
        "olmo_core.data:NumpyFSLDatasetConfig.build",
        ["self"],
        "ffd6f0f691e92150",
    ),
    (
        "olmo_flex_ext.train.callbacks:FlexWandBCallback.pre_train",
        "olmo_core.train.callbacks:WandBCallback.pre_train",
        ["self"],
        "3fad9a17a20fadce",
    ),
    (
        "olmo_flex_ext.train.callbacks:FlexWandBCallback.finalize",
        "olmo_core.train.callbacks:WandBCallback.finalize",
        ["self", "exit_code=0"],
        "624493bb4a599797",
    ),
    (
        "olmo_flex_ext.checkpoint:load_state_dict",
        "olmo_core.distributed.checkpoint:load_model_and_optim_state",
        [
            "dir",
            "model",
            "optim=None",
            "process_group=None",
            "key_mapping=None",
            "pre_download=False",
            "work_dir=None",
            "strict=True",
            "flatten_optimizer_state=False",
            "thread_count=None",
        ],
        "401744716f550a00",
    ),
    (
        "olmo_flex_ext.train.experiment:load_initial_weights",
        "olmo_core.train:Trainer.load_checkpoint",
        [
            "self",
            "dir",
            "load_trainer_state=None",
            "load_optim_state=None",
            "reset_optimizer_states_on_load=None",
        ],
        "cf7b5fa9ff14372a",
    ),
]


def resolve(ref: str):
    module, _, qualname = ref.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def parameters(fn) -> list:
    out = []
    for p in inspect.signature(fn).parameters.values():
        out.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    return out


@pytest.mark.parametrize("mirror,original,params,digest", MIRRORS, ids=[m[0] for m in MIRRORS])
def test_mirrored_function_is_unchanged(mirror, original, params, digest):
    fn = resolve(original)
    assert parameters(fn) == params, (
        f"OLMo-core's {original} changed its parameters to {parameters(fn)}: "
        f"re-check {mirror}, which mirrors it"
    )
    now = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    assert now == digest, (
        f"OLMo-core's {original} changed (source sha256 {now}, recorded {digest}): "
        f"re-check {mirror}, which mirrors it, then record the new hash"
    )


@pytest.mark.parametrize("mirror,original,params,digest", MIRRORS, ids=[m[0] for m in MIRRORS])
def test_mirror_names_what_it_mirrors(mirror, original, params, digest):
    name = original.partition(":")[2]
    doc = inspect.getdoc(resolve(mirror)) or ""
    assert f"Mirrors OLMo-core 3.0 ``{name}``" in " ".join(doc.split()), (
        f"{mirror} must say which OLMo-core function it mirrors and what it changes"
    )
