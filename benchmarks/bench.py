"""The benchmark table of ``xentkit bench``: xentkit against PyTorch (when installed) and a NumPy
copy of the same bytes, in ns per element, with ratios measured within the run.

    python benchmarks/bench.py [--repeat 7] [--threads 1] [--quick] [--json]

The timing code lives in the package (xentkit._bench) so that the installed command runs it too.
"""

import sys

from xentkit._bench import main

if __name__ == "__main__":
    sys.exit(main())
