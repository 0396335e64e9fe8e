"""``python -m mlr_jax`` is the ``mlr-jax`` command."""
import sys

from mlr_jax.cli import main

sys.exit(main())
