"""``python -m bench [MODULE ...]``: run benchmarks with their default settings (default: every
ratio benchmark in :data:`bench.BENCHMARKS`; memory benchmarks only when named)."""

import importlib
import inspect
import sys

from bench import BENCHMARKS, MEMORY_BENCHMARKS


def main(argv=None) -> int:
    names = argv if argv else BENCHMARKS
    status = 0
    for name in names:
        name = name if name.startswith("bench.") else f"bench.{name}"
        if name not in BENCHMARKS + MEMORY_BENCHMARKS:
            print(f"error: unknown benchmark {name}; known: {BENCHMARKS + MEMORY_BENCHMARKS}")
            return 2
        print(f"== {name}", flush=True)
        bench_main = importlib.import_module(name).main
        sys.argv = [name]  # for benchmarks whose main() parses sys.argv itself
        result = bench_main([]) if inspect.signature(bench_main).parameters else bench_main()
        status |= int(result or 0)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
