"""mlr-jax: Mask-based Latent Reconstruction (MLR, NeurIPS 2022) in JAX/Flax."""

from mlr_jax.host import tune_malloc

__version__ = "0.1.0"

tune_malloc()
