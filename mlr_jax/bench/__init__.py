"""Throughput benchmark of the JAX agents against an eager PyTorch port of the authors' code.

``mlr_jax.bench.runner.run_benchmark`` is the entry point (``mlr-jax bench``). The PyTorch
ports live in ``torch_atari`` and ``torch_dmc``; they import torch, an optional extra
(``benchmarks/requirements-torch.txt``), so nothing here imports them eagerly.
"""
