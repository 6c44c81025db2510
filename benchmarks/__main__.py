"""``python -m benchmarks``: the overhead benchmark (options: ``--help``)."""

import sys

from benchmarks.bench_overhead import main

sys.exit(main())
