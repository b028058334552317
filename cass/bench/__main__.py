"""``python -m cass.bench``: the engine benchmark (:mod:`cass.bench.engine`)."""
import sys

from cass.bench.engine import main

sys.exit(main())
