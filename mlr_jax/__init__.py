"""mlr-jax: Mask-based Latent Reconstruction (MLR, NeurIPS 2022) in JAX/Flax."""

import os

# XLA's C++ logging: warnings and errors, not its INFO lines (a user's own setting wins; set
# before JAX loads its C++ runtime)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from mlr_jax.host import tune_malloc  # noqa: E402

__version__ = "0.3.0"

tune_malloc()
