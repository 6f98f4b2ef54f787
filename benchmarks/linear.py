"""Linear interpreter benchmark: time to the full affine map vs torch.func.jacrev of the frozen
model, and the matrix-free top-k SVD vs a dense SVD. Prints JSON.

    .venv/bin/python benchmarks/linear.py            # trained demo models (cached after the first run)
    .venv/bin/python benchmarks/linear.py --quick    # random-init models, one run per timing
"""

import sys

from mechscope.linear.bench import main

if __name__ == "__main__":
    sys.exit(main())
