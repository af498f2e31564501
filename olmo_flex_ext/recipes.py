"""Building blocks of train configs: one function assembles an :class:`ExperimentConfig` from the
settings a user changes (model, data, batch sizes, learning rate, run folder, W&B project).

Train configs in ``train_configs/`` call :func:`flex_experiment` (or :func:`tiny_experiment` for the
CPU ones, or :func:`flex_math_7b`) and add what their run needs (pruning, distillation); every
setting stays overridable from the command line.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from olmo_core.config import DType
from olmo_core.data import NumpyDataLoaderConfig, NumpyFSLDatasetConfig, TokenizerConfig
from olmo_core.data.types import NumpyDatasetDType
from olmo_core.distributed.parallel import DataParallelType
from olmo_core.nn.transformer import TransformerConfig
from olmo_core.optim import AdamWConfig, CosWithWarmup
from olmo_core.train import Duration, TrainerConfig
from olmo_core.train.callbacks import Callback, ConfigSaverCallback
from olmo_core.train.train_module import (
    TransformerActivationCheckpointingConfig,
    TransformerDataParallelConfig,
    TransformerTrainModuleConfig,
)

from .callbacks import FlexCheckpointerCallback, FlexWandBCallback, MetricsLogCallback
from .data.tokens import token_dtype
from .experiment import ExperimentConfig

__all__ = [
    "flex_experiment",
    "tiny_experiment",
    "tiny_data",
    "flex_math_7b",
    "data_root",
    "fsdp",
    "BF16",
    "TINY_TOKENIZER",
]

TINY_TOKENIZER = TokenizerConfig(vocab_size=512, eos_token_id=0, pad_token_id=1)
"""Tokenizer of the synthetic tiny data (ids 0..511, EOS 0)."""


def fsdp(param_dtype: Optional[DType] = None) -> TransformerDataParallelConfig:
    """FSDP2 (used when the run has several ranks; ignored for one process): parameters gathered
    and computed in ``param_dtype`` (default: as stored, float32), gradients reduced in float32;
    the stored (sharded) parameters and the optimizer state stay float32."""
    return TransformerDataParallelConfig(
        name=DataParallelType.fsdp, param_dtype=param_dtype, reduce_dtype=DType.float32
    )


BF16 = DType.bfloat16
"""The 7B configs' compute precision (OLMo-core's 7B recipes): ``fsdp(BF16)``."""


def flex_experiment(
    *,
    model: TransformerConfig,
    data_paths: List[str],
    tokenizer: TokenizerConfig,
    save_folder: str,
    sequence_length: int,
    global_batch_tokens: int,
    microbatch_tokens: int,
    max_duration: Duration,
    lr: float,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: Optional[float] = 1.0,
    save_interval: int = 1000,
    ephemeral_save_interval: Optional[int] = None,
    wandb_project: Optional[str] = "olmo-flex",
    wandb_name: Optional[str] = None,
    load_path: Optional[str] = None,
    metrics_collect_interval: int = 5,
    seed: int = 12536,
    extra_callbacks: Optional[Dict[str, Callback]] = None,
    param_dtype: Optional[DType] = None,
    compile_model: bool = False,
    ac_config: Optional[TransformerActivationCheckpointingConfig] = None,
) -> ExperimentConfig:
    """An experiment training ``model`` on OLMo-core token files with AdamW and cosine decay;
    ``param_dtype``, ``compile_model`` and ``ac_config`` are the train module's speed and memory
    settings (:func:`fsdp`; OLMo-core compiles on CUDA only)."""
    dataset = NumpyFSLDatasetConfig(
        paths=data_paths,
        expand_glob=any(ch in p for p in data_paths for ch in "*?["),
        sequence_length=sequence_length,
        tokenizer=tokenizer,
        dtype=NumpyDatasetDType(token_dtype(tokenizer.padded_vocab_size()).__name__),
        work_dir=None,  # load_experiment puts it in the (possibly overridden) save folder
    )
    data_loader = NumpyDataLoaderConfig(
        global_batch_size=global_batch_tokens, seed=seed, num_workers=0
    )
    train_module = TransformerTrainModuleConfig(
        rank_microbatch_size=microbatch_tokens,
        max_sequence_length=sequence_length,
        optim=AdamWConfig(lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95)),
        scheduler=CosWithWarmup(warmup=warmup_steps),
        max_grad_norm=max_grad_norm,
        dp_config=fsdp(param_dtype),
        compile_model=compile_model,
        ac_config=ac_config,
    )
    callbacks: Dict[str, Callback] = {
        "checkpointer": FlexCheckpointerCallback(
            save_interval=save_interval,
            ephemeral_save_interval=ephemeral_save_interval,
            save_async=False,
        ),
        "config_saver": ConfigSaverCallback(),
        "metrics_log": MetricsLogCallback(),  # run folder's metrics.jsonl: every logged step
        "wandb": FlexWandBCallback(
            enabled=wandb_project is not None,
            project=wandb_project,
            name=wandb_name,
        ),
    }
    callbacks.update(extra_callbacks or {})
    trainer = TrainerConfig(
        save_folder=save_folder,
        save_overwrite=False,
        metrics_collect_interval=metrics_collect_interval,
        cancel_check_interval=10,
        max_duration=max_duration,
        callbacks=callbacks,
    )
    return ExperimentConfig(
        model=model,
        dataset=dataset,
        data_loader=data_loader,
        train_module=train_module,
        trainer=trainer,
        init_seed=seed,
        load_path=load_path,
    )


DATA_ROOT_ENV = "OLMO_FLEX_DATA_ROOT"


def data_root(default: str) -> str:
    """Where train configs look for token data: ``$OLMO_FLEX_DATA_ROOT`` or ``default``."""
    import os

    return os.environ.get(DATA_ROOT_ENV, default)


TINY_SEQ = 128
"""Sequence length of the tiny configs."""


def tiny_data(name: str = "synthetic", seed: int = 0) -> List[str]:
    """Synthetic token files of the tiny configs (made on first use) under
    ``$OLMO_FLEX_DATA_ROOT`` (default ``runs/data``)``/name``; another ``seed`` is another
    bigram chain, i.e. another "domain"."""
    from .data.synthetic import ensure_synthetic_tokens

    root = data_root("runs/data")
    return ensure_synthetic_tokens(f"{root}/{name}", vocab_size=TINY_TOKENIZER.vocab_size, seed=seed)


def tiny_experiment(
    name: str,
    *,
    model: Optional[TransformerConfig],
    steps: int,
    lr: float,
    save_interval: int,
    warmup_steps: int = 5,
    **settings: Any,
) -> ExperimentConfig:
    """:func:`flex_experiment` with the tiny CPU settings: the synthetic data (:func:`tiny_data`),
    sequences of 128 tokens, 8 per step in micro-batches of 4, run folder ``runs/<name>``, W&B
    project ``olmo-flex-tiny``. ``settings`` are any other :func:`flex_experiment` arguments
    (``load_path``, ``extra_callbacks``, ...); ``model=None`` takes it from the checkpoint."""
    return flex_experiment(
        model=model,  # type: ignore[arg-type]  # None: read from the checkpoint by load_experiment
        data_paths=tiny_data(),
        tokenizer=TINY_TOKENIZER,
        save_folder=f"runs/{name}",
        sequence_length=TINY_SEQ,
        global_batch_tokens=8 * TINY_SEQ,
        microbatch_tokens=4 * TINY_SEQ,
        max_duration=Duration.steps(steps),
        lr=lr,
        warmup_steps=warmup_steps,
        save_interval=save_interval,
        wandb_project="olmo-flex-tiny",
        wandb_name=name.replace("_", "-"),
        **settings,
    )


FLEX_7B_AC: Optional[TransformerActivationCheckpointingConfig] = None
"""Activation checkpointing of the 7B configs: none. The memory plan (docs/performance.md) puts a
flex_math_5504 step at 40 GiB per GPU on 8 or 16 GPUs without it, well within an 80 GB card, and
``selected_ops`` (18 GiB) would add 23% more FLOPs of recomputation; on smaller cards, or for a
larger micro-batch, set ``--train_module.ac_config='{mode: selected_ops}'``."""


def flex_math_7b(
    domain_width: int, *, extra_callbacks: Optional[Dict[str, Callback]] = None
) -> ExperimentConfig:
    """Flex-math-2x7B-1T with the math expert at ``domain_width``, distilled from the unpruned
    model's top-128 store with the seed's settings: AdamW (no weight decay), lr 2e-4 with cosine
    decay, ~228M tokens; only the math expert (expert 1) and its router row train. A step is
    16 x 4096 = 65,536 tokens (splits over 1, 2, 4, 8 or 16 GPUs). Speed and memory (see
    docs/performance.md, where the memory plan justifies them): bfloat16 compute with float32
    gradient reduction and optimizer state, compile, :data:`FLEX_7B_AC` activation checkpointing.
    Paths (overridable): initial weights ``load_path`` (the pruned model),
    ``dataset.topk_store``, ``train_module.teacher_path``; all under ``$OLMO_FLEX_DATA_ROOT``."""
    from .distill.recipe import with_distillation
    from .models import flex_olmo_2x7b
    from .train.trainable import train_only_experts

    seq = 4096
    root = data_root("/data/olmo-flex")
    config = flex_experiment(
        model=flex_olmo_2x7b(domain_width),
        data_paths=[f"{root}/dolmino-math/*.npy"],
        tokenizer=TokenizerConfig.dolma2(),
        save_folder=f"runs/flex_math_{domain_width}",
        sequence_length=seq,
        global_batch_tokens=16 * seq,
        microbatch_tokens=seq,
        max_duration=Duration.tokens(228_000_000),
        lr=2e-4,
        warmup_steps=100,
        save_interval=500,
        ephemeral_save_interval=100,
        wandb_project="olmo-flex",
        wandb_name=f"flex-math-{domain_width}",
        load_path=f"{root}/checkpoints/flex-math-{domain_width}-pruned",
        extra_callbacks=extra_callbacks,
        param_dtype=BF16,
        compile_model=True,
        ac_config=FLEX_7B_AC,
    )
    config = with_distillation(
        config,
        store=f"{root}/topk/flex-math-2x7b-top128",
        teacher_path=f"{root}/checkpoints/Flex-math-2x7B-1T",
    )
    return train_only_experts(config, experts=[1], train_router=True)
