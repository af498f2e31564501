"""``python -m bench``: run every benchmark in :data:`bench.BENCHMARKS`."""

import importlib
import sys

from bench import BENCHMARKS


def main(argv=None) -> int:
    status = 0
    for name in BENCHMARKS:
        status |= importlib.import_module(name).main(argv)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
