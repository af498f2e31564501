"""The package imports and the CLI answers."""

import subprocess
import sys


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "olmo_flex_ext.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout
