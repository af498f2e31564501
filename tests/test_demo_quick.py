"""The quick demo end to end, as CI runs it (``olmo-flex demo --quick``), and its resumption.

The quick models are tiny and briefly trained, so greedy accuracy on the held-out problems is a
few percent at best and no more than noise; the orderings are asserted on the math answer loss
(mean nats per answer token), which orders reliably at this scale. The full demo checks accuracy
too (``report.md`` lists its claims).

Resumption: a run killed (SIGKILL) while the math expert trains, and killed again while a pruned
expert is being distilled, then continued with the same command, must end with results equal to
an uninterrupted run. Training is deterministic (seeded, one thread) and a killed training stage
resumes from its latest OLMo-core checkpoint, so equality is exact.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from olmo_flex_ext.demo import demo_config
from olmo_flex_ext.demo.composition import row_name
from olmo_flex_ext.demo.results import check_claims, validate_results
from olmo_flex_ext.demo.targets import composition_targets

pytestmark = pytest.mark.slow

CONFIG = demo_config(quick=True)


def _command(out: Path):
    return [sys.executable, "-m", "olmo_flex_ext.cli", "demo", "--out", str(out), "--quick"]


def _env():
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "disabled")
    return env


def _run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_command(out), capture_output=True, text=True, env=_env(), timeout=600)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "demo"
    start = time.perf_counter()
    done = _run(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"quick demo: {time.perf_counter() - start:.0f} s")
    return out, done.stdout


def test_quick_demo_results(quick):
    out, stdout = quick
    assert "results" in stdout and "composition and opt-out" in stdout
    rows = validate_results(out / "results.json")
    assert [r.kind for r in rows[:2]] == ["public", "full"]
    variants = [str(w) for w in CONFIG.widths()] + [f"budget{CONFIG.budget_width()}"]
    assert [r.name for r in rows[2:]] == [
        f"{k}-{v}" for v in variants for k in ("pruned", "distilled")
    ]
    assert [r.kind for r in rows[2:]] == ["pruned", "pruned+kd"] * len(variants)
    public, full = rows[:2]
    for pruned, kd, width in zip(rows[2::2], rows[3::2], CONFIG.widths() + [None]):
        assert kd.expert_widths == pruned.expert_widths
        layers = _per_layer(pruned)
        assert all(w[0] == CONFIG.public_width for w in layers)  # the public expert is whole
        if width is not None:
            assert all(w[1] == width for w in layers)
        else:  # importance-allocated at the neurons of the 50% width, in multiples
            assert sum(w[1] for w in layers) == CONFIG.n_layers * CONFIG.budget_width()
            assert all(w[1] % CONFIG.width_multiple == 0 for w in layers)
        assert kd.expert_params == pruned.expert_params < full.expert_params
        assert kd.math_loss < pruned.math_loss, kd.name
    assert full.math_loss < public.math_loss
    claims = check_claims(rows, margin=CONFIG.margin, accuracy=False)
    assert len(claims) == 1 + 4 + 2 and all(c.holds for c in claims), claims


def _per_layer(row):
    w = row.expert_widths
    return w if isinstance(w[0], list) else [w] * CONFIG.n_layers


def test_quick_demo_composition_and_report(quick):
    out, stdout = quick
    rows = {r["name"]: r for r in json.loads((out / "composition.json").read_text())}
    half = CONFIG.composed_width()
    group = ["merged", "merged + router tuning", "tuned, math opted out", "tuned, code opted out"]
    assert list(rows) == ["public", "math expert", "code expert"] + group + [
        f"math expert (distilled {half})"
    ] + [row_name(str(half), n) for n in group]  # fmt: skip
    public = rows["public"]
    # each expert knows its domain
    assert rows["math expert"]["math_loss"] < public["math_loss"]
    assert rows["code expert"]["code_loss"] < public["code_loss"]
    for tag, math_width in (("", CONFIG.public_width), (str(half), half)):
        tuned = rows[row_name(tag, "merged + router tuning")]
        assert tuned["experts"] == ["public", "math", "code"]
        assert tuned["expert_widths"] == [CONFIG.public_width, math_width, CONFIG.public_width]
        # merged, each domain does better than without its expert; switching one off loses
        # what it knows and keeps what the other knows
        for name in ("merged", "merged + router tuning"):
            row = rows[row_name(tag, name)]
            assert row["math_loss"] < public["math_loss"] and row["code_loss"] < public["code_loss"]
        math_off = rows[row_name(tag, "tuned, math opted out")]
        code_off = rows[row_name(tag, "tuned, code opted out")]
        assert math_off["math_loss"] > tuned["math_loss"]
        assert math_off["code_loss"] < public["code_loss"]
        assert code_off["code_loss"] > tuned["code_loss"]
        assert code_off["math_loss"] < public["math_loss"]
    targets = composition_targets(list(rows.values()), CONFIG.composition_tags())
    assert len(targets) == 24

    md = (out / "report.md").read_text()
    assert "## Checks" in md and "## Composition" in md and "| merged + router tuning |" in md
    assert f"{sum(t.holds for t in targets)} of 24 composition targets hold" in md
    assert "composition targets:" in stdout
    assert "## Routing: where each domain's tokens go" in md
    for png in ("curves-0.png", "calibration-overlap.png", "width-allocation.png", "routing.png"):
        assert f"plots/{png}" in md and (out / "plots" / png).stat().st_size > 1000
    records = [json.loads(p.read_text()) for p in (out / "stages").glob("*.json")]
    assert all(r["seconds"] >= 0 and r["cpu_seconds"] > 0 for r in records)


def test_quick_demo_routing(quick):
    from olmo_flex_ext.compose import RoutingStatistics

    out, _ = quick
    data = json.loads((out / "routing.json").read_text())
    stats = {name: RoutingStatistics.from_json(d, name) for name, d in data.items()}
    half = str(CONFIG.composed_width())
    group = ["merged", "merged + router tuning", "tuned, code opted out", "tuned, math opted out"]
    assert list(stats) == ["math expert", "code expert"] + group + [
        f"math expert (distilled {half})"
    ] + [row_name(half, n) for n in group]  # fmt: skip
    tokens = CONFIG.eval_windows * CONFIG.seq_len
    for name, st in stats.items():
        assert st.domains == ["general", "math", "code"] and st.n_layers == CONFIG.n_layers
        assert st.tokens == {d: tokens for d in st.domains}
    assert stats["math expert"].experts == ["public", "math"]
    assert stats["merged"].top_k == CONFIG.merge_top_k and stats["merged"].num_experts == 3
    for name, off in (("tuned, code opted out", 2), ("tuned, math opted out", 1)):
        assert stats[name].opt_out == [off]
        assert all(row[off] == 0 for d in stats[name].domains for row in stats[name].share[d])

    # each expert model's router gives its domain expert more weight on that domain's tokens
    # than on general text (its top-k is both experts, so the share is 1 and only the
    # probability tells)
    for name, domain in (("math expert", "math"), ("code expert", "code")):
        p = stats[name].probability
        mean = {d: stats[name].layer_mean(p, d)[1] for d in ("general", domain)}
        assert mean[domain] > mean["general"], (name, mean)


def _kill_when(out: Path, marker: str, timeout: float = 300.0) -> str:
    """Start the demo, SIGKILL it as soon as ``out/marker`` exists; returns its output."""
    log = out.parent / f"{out.name}-{marker.replace('/', '-')}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_command(out), stdout=f, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + timeout
        while not (out / marker).exists():
            assert proc.poll() is None, f"the demo ended before {marker} appeared"
            assert time.monotonic() < deadline, f"{marker} did not appear"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    return log.read_text()


def test_interrupted_quick_demo_ends_with_the_same_results(quick, tmp_path):
    reference, _ = quick
    out = tmp_path / "demo"
    _kill_when(out, f"runs/math-expert/step{CONFIG.expert.save_interval}")
    assert not (out / "stages" / "math-expert.json").exists()  # killed inside the stage
    width = CONFIG.widths()[1]
    _kill_when(out, f"runs/distill-{width}/step{CONFIG.distill.save_interval}")
    logs = out / "logs"  # a stage's output goes to its log, appended by each invocation
    resumed = f"Loading checkpoint from '{out}/runs/math-expert/step"
    assert resumed in (logs / "math-expert.log").read_text()
    assert (out / "stages" / "math-expert.json").exists()
    assert not (out / "stages" / f"distill-{width}.json").exists()

    done = _run(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumed = f"Loading checkpoint from '{out}/runs/distill-{width}/step"
    assert resumed in (logs / f"distill-{width}.log").read_text()
    skipped = [line for line in done.stdout.splitlines() if line.startswith("· math-expert")]
    assert skipped and "done earlier" in skipped[0]  # finished stages are not redone
    assert "Loading checkpoint" not in done.stdout  # one line per stage on the terminal
    for name in ("results.json", "composition.json"):
        assert json.loads((out / name).read_text()) == json.loads((reference / name).read_text())
