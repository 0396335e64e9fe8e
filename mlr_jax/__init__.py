"""mlr-jax: Mask-based Latent Reconstruction (MLR, NeurIPS 2022) in JAX/Flax."""

__version__ = "0.1.0"
