"""The memory plan against real steps: the plan's peak (fake tensors, fake process group) within
15% of the CPU allocator's peak over two real training steps of the same config (1 process and 2
gloo FSDP ranks), and the ``olmo-flex plan`` command's report and refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from olmo_flex_ext.train.plan import plan_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["tiny_flex.py", "tiny_flex_math_kd.py"]  # CE; KD from a store with expert-only training


def _nodes(tree):
    for node in tree:
        yield node
        yield from _nodes(node.children)


def measure(config_path: str, world_size: int, out: str) -> None:
    """Build the config's experiment for real and run two steps on a random batch; write the CPU
    allocator's peak during the steps (the profiler's running total of allocated bytes)."""
    import torch.distributed as dist

    from olmo_flex_ext.train.experiment import build_model, check_parallelism, load_experiment
    from olmo_flex_ext.train.fake_step import StepTrainer, step_batch

    config = load_experiment(config_path)
    check_parallelism(config, ranks=world_size)
    torch.manual_seed(0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_module = config.train_module.build(build_model(config), device=torch.device("cpu"))
        train_module._attach_trainer(StepTrainer())
        train_module.scheduler = None
        batch = step_batch(config, world_size)
        with record_function("steps"):
            for _ in range(2):
                train_module.train_batch(dict(batch))
                train_module.optim_step()
                train_module.zero_grads()
    nodes = list(_nodes(prof.profiler.kineto_results.experimental_event_tree()))
    steps = next(n for n in nodes if n.name == "steps")
    allocs = sorted((n for n in nodes if n.tag == torch._C._profiler._EventType.Allocation),
                    key=lambda n: n.start_time_ns)  # fmt: skip
    # the running total starts at what an earlier profile in this process left alive
    before = allocs[0].extra_fields.total_allocated - allocs[0].extra_fields.alloc_size
    peak = max(n.extra_fields.total_allocated for n in allocs
               if steps.start_time_ns <= n.start_time_ns <= steps.end_time_ns) - before  # fmt: skip
    if not dist.is_initialized() or dist.get_rank() == 0:
        Path(out).write_text(json.dumps(peak))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    os.environ["OLMO_FLEX_DATA_ROOT"] = str(root / "data")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("name", CONFIGS)
def test_plan_peak_is_within_15_percent_of_real_steps(name, world_size, data_root):
    config = str(ROOT / "train_configs" / name)
    plan = plan_run(config, world_size=world_size, search=False)
    out = data_root / f"{name}-{world_size}.json"
    if world_size == 1:
        measure(config, 1, str(out))
    else:
        from olmo_core.testing import run_distributed_test

        run_distributed_test(measure, world_size=2, backend="gloo", start_method="spawn",
                             func_args=(config, 2, str(out)))  # fmt: skip
    measured = json.loads(out.read_text())
    assert abs(plan.step.peak - measured) <= 0.15 * measured, (plan.step.peak, measured)
    assert sum(plan.step.categories.values()) == plan.step.peak
    assert plan.step.categories["optimizer state"] > 0  # the peak is in a step with its state
    if name == "tiny_flex_math_kd.py":
        assert plan.pruning is not None and plan.pruning.peak > 0  # the pruning teacher


def olmo_flex(*args, cwd):
    return subprocess.run([sys.executable, "-m", "olmo_flex_ext.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_plan_command_finds_the_largest_micro_batch_and_refuses_bad_input(data_root):
    config = str(ROOT / "train_configs" / "tiny_flex.py")
    # 2 ranks, 4 sequences each, micro-batches of 4 (about 15 MB): at 12 MB only 2 fit
    proc = olmo_flex(
        "plan", config, "--world-size", "2", "--gpu-memory", "12MB", "--json", cwd=data_root
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    assert plan["fits"] is False and plan["micro_batch"] == 4 and plan["rank_batch"] == 4
    assert plan["largest_micro_batch"] == 2
    assert plan["largest_micro_batch_peak"] <= plan["usable"] < plan["step"]["peak"]
    assert plan["tokens_per_step"] == 8 * 128 and plan["steps"] == 200
    assert plan["executed_flops_per_token"] > 0 and plan["step_seconds"] > 0

    text = olmo_flex("plan", config, "--world-size", "2", "--no-search", cwd=data_root)
    assert text.returncode == 0 and "memory per GPU at the peak" in text.stdout

    for args, message in [
        (["missing.py"], "does not exist"),
        ([config, "--world-size", "3"], "cannot be split"),
        ([config, "--gpu-memory", "lots"], "not understood"),
        ([config, "--mfu", "2"], "must be fractions"),
        ([config, "--model.nope=1"], "nope"),
    ]:
        bad = olmo_flex("plan", *args, cwd=data_root)
        errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
        assert bad.returncode == 2 and len(errors) == 1 and message in errors[0], bad.stderr
        assert "Traceback" not in bad.stderr and not bad.stdout


def test_routed_layers_are_planned_with_an_assumed_routing(data_root):
    from olmo_flex_ext.nn.moe import VariableMoEMLP

    mlp = VariableMoEMLP(d_model=8, expert_widths=[16, 48, 32])
    ids = torch.zeros(10, 2, dtype=torch.long)  # the values are never read when assumed
    mlp.assumed_routing = "balanced"
    assert mlp.tokens_per_expert(ids) == [7, 7, 6] and mlp.tokens_per_expert(ids, [0, 2]) == [
        10,
        0,
        10,
    ]
    mlp.assumed_routing = "worst"  # every token to the top-2 widest experts
    assert mlp.tokens_per_expert(ids) == [0, 10, 10]

    config = str(ROOT / "train_configs" / "tiny_flex.py")
    top1 = ["--model.block.feed_forward_moe.router.top_k=1"]
    balanced = plan_run(config, top1, world_size=1, search=False)
    worst = plan_run(config, top1, world_size=1, search=False, routing="worst")
    assert 0 < balanced.step.peak < worst.step.peak
