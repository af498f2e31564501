"""Distil the tiny FlexOlmo's domain expert pruned to width 32 from the unpruned model, on CPU:
the same recipe as flex_math_*.py (top-k store, KL loss, only expert 1 and its router row train).

    python -m olmo_flex_ext.launch train_configs/tiny_flex.py            # the teacher
    olmo-flex logprobs runs/tiny_flex --data 'runs/data/synthetic/*.npy' --seq-len 128 \
        --top-k 32 --out runs/tiny_flex_math_kd/store                    # its top-k store
    # the student: the teacher with expert 1 pruned to 32 neurons, at runs/tiny_flex_math_kd/student
    python -m olmo_flex_ext.launch train_configs/tiny_flex_math_kd.py

Settings: ``--load_path`` (the pruned student; the model config, any widths, is read from it),
``--dataset.topk_store``, ``--train_module.teacher_path``.
"""

from olmo_core.train import Duration

from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
from olmo_flex_ext.distill.recipe import with_distillation
from olmo_flex_ext.recipes import TINY_TOKENIZER, data_root, flex_experiment
from olmo_flex_ext.train.trainable import train_only_experts

RUN = "runs/tiny_flex_math_kd"


def build_config():
    seq = 128
    paths = ensure_synthetic_tokens(f"{data_root('runs/data')}/synthetic", vocab_size=512)
    config = flex_experiment(
        model=None,  # the pruned student's, read from load_path
        data_paths=paths,
        tokenizer=TINY_TOKENIZER,
        save_folder=RUN,
        sequence_length=seq,
        global_batch_tokens=8 * seq,
        microbatch_tokens=4 * seq,
        max_duration=Duration.steps(200),
        lr=3e-3,
        warmup_steps=5,
        save_interval=50,
        wandb_project="olmo-flex-tiny",
        wandb_name="tiny-flex-math-kd",
        load_path=f"{RUN}/student",
    )
    config = with_distillation(config, store=f"{RUN}/store", teacher_path="runs/tiny_flex")
    return train_only_experts(config, experts=[1], train_router=True)
