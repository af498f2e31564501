"""The README and docs/ name only things that exist: every ``olmo-flex`` command and each flag the
docs give it (as its ``--help`` lists them), every ``olmo_flex_ext`` module and name, every file
(train configs, bench scripts, docs pages) and make target; and the README's Python example runs.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))

FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
SPAN = re.compile(r"`([^`\n]+)`")


def blocks(text: str) -> Iterator[Tuple[str, str]]:
    for m in FENCE.finditer(text):
        yield m.group(1), m.group(2)


def prose(text: str) -> str:
    return FENCE.sub("", text)


def command_lines(text: str) -> Iterator[str]:
    """Shell lines (backslash continuations joined) from bash blocks, and inline code spans,
    that run an ``olmo-flex`` command."""
    for lang, body in blocks(text):
        if lang in ("bash", "sh", ""):
            for line in body.replace("\\\n", " ").splitlines():
                yield line.split("  #")[0].split(" # ")[0]
    for span in SPAN.findall(prose(text)):
        yield span


def parse_command(line: str) -> Tuple[str, List[str]] | None:
    """(subcommand, flags) of an ``olmo-flex SUB ...`` / ``-m olmo_flex_ext.cli SUB ...`` line."""
    m = re.search(r"(?:^|\s)(?:olmo-flex|-m olmo_flex_ext\.cli)\s+([a-z][a-z0-9-]*)(.*)", line)
    if not m:
        return None
    try:
        words = shlex.split(m.group(2).replace("[", " ").replace("]", " ").replace("|", " "))
    except ValueError:
        words = m.group(2).split()
    flags = [w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", w)]
    return m.group(1), flags


def subcommands() -> Dict[str, argparse.ArgumentParser]:
    from olmo_flex_ext.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def page_ids() -> List[str]:
    return [str(p.relative_to(REPO)) for p in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_commands_and_flags_exist(page):
    parsers = subcommands()
    problems = []
    for line in command_lines(page.read_text()):
        parsed = parse_command(line)
        if parsed is None:
            continue
        sub, flags = parsed
        if sub not in parsers:
            problems.append(f"unknown command `olmo-flex {sub}` in: {line.strip()}")
            continue
        known = {s for a in parsers[sub]._actions for s in a.option_strings}
        if sub == "train":  # takes the launcher's arguments and dotted overrides
            continue
        problems += [
            f"`olmo-flex {sub}` has no option {f} (in: {line.strip()})"
            for f in flags
            if f not in known
        ]
    assert not problems, "\n".join(problems)


def package_names() -> Set[str]:
    """Every name defined at module level or as a class member anywhere in olmo_flex_ext."""
    names: Set[str] = set()
    for path in (REPO / "olmo_flex_ext").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def resolve(dotted: str) -> bool:
    """Whether ``olmo_flex_ext.a.b.C.d`` is an importable module or an attribute of one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_python_names_exist(page):
    text = page.read_text()
    problems = []
    dotted = set(re.findall(r"\bolmo_flex_ext(?:\.[A-Za-z_]\w*)+", text))
    problems += [f"{d} does not exist" for d in sorted(dotted) if not resolve(d.rstrip("."))]
    for lang, body in blocks(text):
        if lang != "python":
            continue
        for m in re.finditer(r"^from (olmo_flex_ext[\w.]*) import ([^\n#]+)", body, re.M):
            for name in m.group(2).replace("(", "").replace(")", "").split(","):
                if name.strip() and not resolve(f"{m.group(1)}.{name.strip()}"):
                    problems.append(f"from {m.group(1)} import {name.strip()}: no such name")
    # Inline calls such as `with_distillation(config, ...)` or `flex_math_7b(width)` name
    # functions of this package (or OLMo-core's); look them up by name.
    defined = package_names()
    for span in SPAN.findall(prose(text)):
        m = re.fullmatch(r"(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*)\(.*\)?", span.strip())
        if m and "_" in m.group(1) and not span.startswith(("torch.", "transformers.")):
            if m.group(1) not in defined and not _olmo_core_has(m.group(1)):
                problems.append(f"`{span}`: no function {m.group(1)} in olmo_flex_ext")
        # Class names such as `KDTrainModule` or `VariableMoEConfig(MoEConfig)`.
        for name in re.findall(r"\b([A-Z][a-z0-9]+(?:[A-Z][A-Za-z0-9]*)+)\b", span):
            if (
                name not in defined
                and not _olmo_core_has(name, "class")
                and not _transformers_has(name)
            ):
                problems.append(f"`{span}`: no class {name} in olmo_flex_ext or OLMo-core")
    assert not problems, "\n".join(problems)


def _olmo_core_has(name: str, kind: str = "def") -> bool:
    return re.search(rf"\b{kind} {name}\b", _olmo_core_source()) is not None


def _transformers_has(name: str) -> bool:
    import transformers

    return hasattr(transformers, name)


@functools.lru_cache(maxsize=1)
def _olmo_core_source() -> str:
    import olmo_core

    return "\n".join(p.read_text() for p in Path(olmo_core.__file__).parent.rglob("*.py"))


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_files_and_make_targets_exist(page):
    text = page.read_text()
    problems = []
    for path in set(
        re.findall(
            r"\b((?:train_configs|bench|launch|tests|docs)/[\w./-]+\.(?:py|md|sbatch))", text
        )
    ):
        if not (REPO / path).exists() and not (REPO / "docs" / Path(path).name).exists():
            problems.append(f"{path} does not exist")
    for link in re.findall(r"\]\(([\w./-]+\.md)\)", text):
        if not (page.parent / link).exists():
            problems.append(f"link {link} does not exist")
    targets = set(re.findall(r"^([a-z]+):", (REPO / "Makefile").read_text(), re.M))
    problems += [
        f"make {t}: no such target"
        for t in re.findall(r"\bmake ([a-z]+)\b", text)
        if t not in targets
    ]
    assert not problems, "\n".join(problems)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's example, on a tiny random checkpoint where it expects the tiny config's run."""
    from olmo_flex_ext.checkpoint import save_model
    from olmo_flex_ext.data.synthetic import ensure_synthetic_tokens
    from olmo_flex_ext.models import tiny_flex

    monkeypatch.chdir(tmp_path)
    ensure_synthetic_tokens(tmp_path / "runs/data/synthetic", vocab_size=512)
    config = tiny_flex([256, 96])
    save_model(tmp_path / "runs/tiny_flex", config, config.build(init_device="cpu").state_dict())
    example = next(
        body for lang, body in blocks((REPO / "README.md").read_text()) if lang == "python"
    )
    scope: Dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert (tmp_path / "runs/tiny_pruned/config.json").is_file()
    widths = [
        [m.experts.mlp.expert_widths for m in [b.feed_forward_moe]][0]
        for b in scope["pruned"].blocks.values()
    ]
    assert all(w[0] == 256 and w[1] % 16 == 0 for w in widths) and sum(w[1] for w in widths) == 96
