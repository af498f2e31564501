"""``olmo-flex --help`` stays light: building the parser (every command group's ``register``)
imports neither torch nor OLMo-core; they load only when a command runs."""

import json
import os
import subprocess
import sys

CODE = """
import contextlib, io, json, sys
import olmo_flex_ext.cli as cli
parser = cli.build_parser()
commands = sorted(parser._subparsers._group_actions[0].choices)
for name in commands:  # every command's --help, too
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args([name, "--help"])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "olmo_core", "numpy", "transformers"})
print(json.dumps({"commands": commands, "heavy": heavy}))
"""


def test_building_the_parser_imports_neither_torch_nor_olmo_core():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))  # this checkout's package
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env=env
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"importance", "prune", "merge", "logprobs", "export-hf"} <= set(result["commands"])
    assert result["heavy"] == [], result["heavy"]
