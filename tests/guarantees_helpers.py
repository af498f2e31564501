"""Shared pieces of the guarantee tests: one set of small, valid inputs of every kind (built once
per session), ways to damage or forge them, a snapshot of a file tree, and runners that call a
command in this process or as a subprocess.

Every refusal case checks the same things: exit status 2, exactly one line on stderr and it
starts with ``error:`` (so no traceback and no library noise), the message names what it should,
and the file trees of the inputs and of the case's folder are the same before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
SEQ = 32
K = 8
WIDTHS = [64, 32]


@dataclass
class Inputs:
    """Valid inputs of every kind a command takes (never changed by a test)."""

    root: Path
    ck: Path  # model-only checkpoint, widths [64, 32], vocab 512
    other: Path  # another model: widths [64, 16]
    run: Path  # a run folder: run/step2 (model-only layout) and metrics.jsonl
    data: List[str]  # two token files (vocab 512)
    scores: Path  # importance scores of ck
    widths: Path  # a widths file (allocate --out) for ck
    store: Path  # top-k store of ck over data (seq 32, k 8)
    emb: Path  # domain embeddings of ck (one domain)
    hf: Path  # ck exported to a transformers directory
    corpus: Path  # a JSONL corpus
    tokenizer: Path  # a tokenizer directory (the demo's BPE)

    @property
    def glob(self) -> str:
        return str(Path(self.data[0]).parent / "*.npy")


def build_inputs(root: Path) -> Inputs:
    sys.path.insert(0, str(REPO / "tests"))
    from prune_helpers import tiny_checkpoint

    from olmo_flex_ext.compose.embeddings import compute_domain_embeddings, save_domain_embeddings
    from olmo_flex_ext.data.synthetic import TINY_TOKENIZER, ensure_synthetic_tokens
    from olmo_flex_ext.demo.data.tokenizer import train_bpe_tokenizer
    from olmo_flex_ext.distill.generate import generate_store
    from olmo_flex_ext.hf import export_hf
    from olmo_flex_ext.prune.allocate import allocate_for_budget
    from olmo_flex_ext.prune.importance import checkpoint_importance

    data = ensure_synthetic_tokens(root / "data", vocab_size=512, tokens_per_file=2048)
    ck = tiny_checkpoint(root / "ck", WIDTHS)
    other = tiny_checkpoint(root / "other", [64, 16], seed=1)
    run = root / "run"
    shutil.copytree(ck, run / "step2")
    (run / "metrics.jsonl").write_text('{"step": 2}\n')
    scores = checkpoint_importance(ck, data, seq_len=SEQ, num_seqs=8, progress=False)
    scores.save(root / "scores.safetensors")
    widths = allocate_for_budget(scores, budget_width=16, multiple=8)
    (root / "widths.json").write_text(json.dumps({"expert_widths": widths}))
    generate_store(ck, data, seq_len=SEQ, k=K, out=root / "store", tokenizer=TINY_TOKENIZER,
                   windows_per_chunk=16, progress=False)  # fmt: skip
    emb = compute_domain_embeddings(ck, {"a": data}, seq_len=SEQ, num_seqs=4, progress=False)
    save_domain_embeddings(root / "emb.safetensors", emb)
    export_hf(ck, root / "hf")
    corpus = root / "corpus" / "docs.jsonl"
    corpus.parent.mkdir()
    corpus.write_text(
        "".join(json.dumps({"text": f"document {i} says 12 + {i}"}) + "\n" for i in range(40))
    )
    texts = [f"the number {i} and {i * 7} words" for i in range(200)]
    tokenizer = train_bpe_tokenizer(texts, root / "tokenizer", vocab_size=300)
    return Inputs(root, ck, other, run, data, root / "scores.safetensors", root / "widths.json",
                  root / "store", root / "emb.safetensors", root / "hf", corpus, tokenizer)  # fmt: skip


# ---- file trees ---------------------------------------------------------------------------------


def snapshot(*roots: Path) -> Dict[str, Tuple[int, str]]:
    """Every file and folder under ``roots`` (hidden ones too): size and SHA-256 of files."""
    out: Dict[str, Tuple[int, str]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = (-1, "dir")
            for f in filenames:
                p = os.path.join(dirpath, f)
                if os.path.islink(p):
                    out[p] = (-2, os.readlink(p))
                    continue
                data = Path(p).read_bytes()
                out[p] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def tree_diff(before: Dict, after: Dict) -> List[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return (
        [f"added {p}" for p in added]
        + [f"removed {p}" for p in removed]
        + [f"changed {p}" for p in changed]
    )


# ---- damaging and forging -----------------------------------------------------------------------


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True) if src.is_dir() else shutil.copy(src, dst)
    return dst


def data_files(ckpt: Path) -> List[Path]:
    return sorted(ckpt.glob("*.distcp"))


def flip_bytes(file: Path, offset: int, data: bytes = b"\xff" * 8) -> None:
    with open(file, "r+b") as f:
        f.seek(offset if offset >= 0 else file.stat().st_size + offset)
        f.write(data)


class Marker:
    """Unpickling this creates ``path``: proof that a file ran code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def forge_metadata(ckpt_dir: Path, marker: Path) -> None:
    """Replace a DCP ``.metadata`` with a pickle that would create ``marker``."""
    (ckpt_dir / ".metadata").write_bytes(pickle.dumps(Marker(marker)))


def forge_data_item(ckpt_dir: Path, marker: Path) -> None:
    """Point one tensor of a DCP at a ``torch.save`` blob that would create ``marker`` (the
    ``.metadata`` itself stays valid). The test, not the code under test, unpickles here."""
    meta_file = ckpt_dir / ".metadata"
    meta = pickle.loads(meta_file.read_bytes())
    blob = ckpt_dir / "__evil.distcp"
    torch.save(Marker(marker), blob)
    key = next(iter(meta.storage_data))
    info = meta.storage_data[key]
    meta.storage_data[key] = type(info)(
        relative_path=blob.name, offset=0, length=blob.stat().st_size
    )
    meta_file.write_bytes(pickle.dumps(meta))


def trainer_step(src: Path, step_dir: Path) -> Path:
    """A trainer checkpoint directory ``stepN/`` (the layout OLMo-core resumes from) holding the
    weights of the model-only checkpoint ``src`` and a small trainer state."""
    step_dir.mkdir(parents=True)
    config = json.loads((src / "config.json").read_text())
    (step_dir / "config.json").write_text(json.dumps({"model": config["model"]}))  # as OLMo-core's
    weights = step_dir / "model_and_optim"
    weights.mkdir()
    for f in list(data_files(src)) + [src / ".metadata"]:
        shutil.copy(f, weights / f.name)
    (step_dir / "train").mkdir()
    torch.save({"global_step": 2, "rng": torch.zeros(4)}, step_dir / "train" / "rank0.pt")
    (step_dir / ".metadata.json").write_text("{}")
    return step_dir


# ---- running commands ---------------------------------------------------------------------------


def run_inprocess(argv: Sequence[str], capfd) -> Tuple[int, str, str]:
    """``olmo-flex ARGV`` in this process: (exit status, stdout, stderr). An exception other than
    ``SystemExit`` propagates: it would be a traceback for the user."""
    from olmo_flex_ext.cli import main

    capfd.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capfd.readouterr()
    return int(code or 0), out, err


def cli_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", **extra)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def cli_command(argv: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "olmo_flex_ext.cli", *[str(a) for a in argv]]


def run_subprocess(argv: Sequence[str], timeout: float = 300, **env: str) -> Tuple[int, str, str]:
    p = subprocess.run(cli_command(argv), capture_output=True, text=True, timeout=timeout,
                       env=cli_env(**env), cwd=REPO)  # fmt: skip
    return p.returncode, p.stdout, p.stderr


def assert_refused(code: int, err: str, expect: Sequence[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code}, stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), (
        f"stderr is not one error line:\n{err}"
    )
    assert "Traceback" not in err
    for text in expect:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


@dataclass
class Case:
    """One refusal: ``setup(inputs, tmp)`` prepares the case's folder and returns the command's
    arguments; the error must contain every string of ``expect`` (``{tmp}`` and ``{root}`` are
    filled in)."""

    name: str
    setup: Callable[[Inputs, Path], List]
    expect: Sequence[str] = ()
    env: Optional[Dict[str, str]] = None


def check_case(case: Case, inputs: Inputs, tmp: Path, capfd, monkeypatch) -> None:
    for key, value in (case.env or {}).items():
        monkeypatch.setenv(key, value)
    tmp.mkdir(parents=True, exist_ok=True)
    argv = case.setup(inputs, tmp)
    before = snapshot(inputs.root, tmp)
    code, _, err = run_inprocess(argv, capfd)
    after = snapshot(inputs.root, tmp)
    expect = [e.format(tmp=tmp, root=inputs.root) for e in case.expect]
    assert_refused(code, err, expect)
    assert not tree_diff(before, after), "\n".join(tree_diff(before, after))


def wait_for(predicate: Callable[[], bool], timeout: float = 120, what: str = "") -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)
