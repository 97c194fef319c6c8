"""``python -m osteo_jax.cli``: the ``osteo-jax`` console script."""

import sys

from osteo_jax.cli import main

sys.exit(main())
