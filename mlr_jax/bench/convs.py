"""The convolution trunks alone: the profile behind the CPU numbers of the update benchmark.

Times the forward pass and forward + backward (sum of squares of the output, gradient with
respect to the weights, as in training: the pixels need none) of one domain's conv trunk at
one batch size:

* DMC: :class:`mlr_jax.nets.dmc.ConvStack` (4 layers 3x3x64, first stride 2) on 9x84x84;
* Atari: :class:`mlr_jax.nets.atari.NatureCNN` convolutions (8/4/3, strides 4/2/1) on 4x84x84;

for JAX with each ``run.conv_impl`` (``xla``, ``im2col``) and for torch (``nn.Conv2d``: oneDNN
on CPUs, cuDNN on GPUs) when it is installed, and writes
``<outdir>/convs_<domain>_<device>_<YYYYmmdd-HHMMSS>.json``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mlr_jax import parallel
from mlr_jax.bench.timing import DEFAULT_OUTDIR, median_ms, write_record
from mlr_jax.config import AtariConfig, DMCConfig, make_config
from mlr_jax.host import tune_malloc
from mlr_jax.nets.atari import NatureCNN
from mlr_jax.nets.conv import IMPLS
from mlr_jax.nets.dmc import ConvStack


def _layers(cfg: AtariConfig | DMCConfig) -> tuple[int, list[tuple[int, int, int]]]:
    """Input channels and ``(features, kernel, stride)`` per layer."""
    if isinstance(cfg, AtariConfig):
        return cfg.frame_stack, list(zip(cfg.channels, cfg.kernels, cfg.strides))
    return (3 * cfg.frame_stack,
            [(cfg.num_filters, 3, 2 if i == 0 else 1) for i in range(cfg.num_conv_layers)])


def _jax_trunk(cfg: AtariConfig | DMCConfig, impl: str) -> Any:
    if isinstance(cfg, AtariConfig):
        return NatureCNN(cfg.channels, cfg.kernels, cfg.strides, renormalize=False, conv_impl=impl)
    return ConvStack(cfg.num_filters, cfg.num_conv_layers, conv_impl=impl)


def _time_jax(cfg: AtariConfig | DMCConfig, impl: str, x: np.ndarray,
              repeats: int) -> tuple[dict[str, float], np.ndarray]:
    """Timings of one implementation and its forward output (the same parameters for every
    implementation: one init key, one parameter layout)."""
    trunk = _jax_trunk(cfg, impl)
    params = trunk.init(jax.random.PRNGKey(0), x[:1])
    forward = jax.jit(trunk.apply)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(trunk.apply(p, x) ** 2)))
    xs = jnp.asarray(x)
    timings = {"forward_ms": median_ms(lambda: jax.block_until_ready(forward(params, xs)), repeats, 1),
               "forward_backward_ms": median_ms(
                   lambda: jax.block_until_ready(grad(params, xs)), repeats, 1)}
    return timings, np.asarray(forward(params, xs))


def _time_torch(in_channels: int, layers: list[tuple[int, int, int]], x: np.ndarray, device: str,
                repeats: int) -> dict[str, Any]:
    import torch

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    modules, c = [], in_channels
    for features, kernel, stride in layers:
        modules += [torch.nn.Conv2d(c, features, kernel, stride), torch.nn.ReLU()]
        c = features
    trunk = torch.nn.Sequential(*modules).to(dev)
    xs = torch.as_tensor(x, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            trunk(xs / 255.0)
        sync()

    def forward_backward():
        trunk.zero_grad(set_to_none=True)
        (trunk(xs / 255.0) ** 2).sum().backward()
        sync()

    return {"forward_ms": median_ms(forward, repeats, 1),
            "forward_backward_ms": median_ms(forward_backward, repeats, 1),
            "threads": torch.get_num_threads(), "version": torch.__version__}


def run_conv_benchmark(domain: str = "dmc", device: str = "cpu", preset: str = "paper",
                       batch: int = 128, repeats: int = 5,
                       outdir: str | os.PathLike = DEFAULT_OUTDIR) -> dict[str, Any]:
    """Time the conv trunk of ``domain`` at ``batch`` frames; returns (and writes) the record:
    per implementation ``{forward_ms, forward_backward_ms}`` (medians over ``repeats`` after
    one warm-up call), keys ``jax_xla``, ``jax_im2col`` and ``torch`` (absent without torch);
    each JAX entry also has ``max_rel_diff_vs_xla``, its output's largest difference from the
    XLA convolutions' on the same parameters and frames, over the output's largest value."""
    cfg = make_config(domain, None, preset)
    in_channels, layers = _layers(cfg)
    x = np.random.default_rng(0).integers(0, 256, (batch, in_channels, 84, 84)).astype(np.float32)
    record: dict[str, Any] = {
        "domain": domain, "device_kind": device, "device": parallel.device_description(),
        "preset": preset, "batch": batch, "repeats": repeats, "layers": layers,
        "input_shape": list(x.shape), "malloc": tune_malloc(), "jax": jax.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    outputs = {}
    for impl in IMPLS:
        record[f"jax_{impl}"], outputs[impl] = _time_jax(cfg, impl, x, repeats)
    # the implementations time the same function: each output against XLA's, relative to its scale
    scale = float(np.abs(outputs["xla"]).max())
    for impl in IMPLS:
        record[f"jax_{impl}"]["max_rel_diff_vs_xla"] = float(np.abs(outputs[impl] - outputs["xla"]).max()) / scale
    try:
        record["torch"] = _time_torch(in_channels, layers, x, device, repeats)
    except ImportError:
        pass
    return write_record(record, outdir, f"convs_{domain}_{device}")


def conv_summary(record: dict[str, Any]) -> str:
    """One line: forward / forward+backward ms of each implementation."""
    parts = [f"{record['domain']} conv trunk, batch {record['batch']} on {record['device']}"]
    for key in ("jax_xla", "jax_im2col", "torch"):
        if key in record:
            parts.append(f"{key} {record[key]['forward_ms']:.0f} / "
                         f"{record[key]['forward_backward_ms']:.0f} ms")
    return "; ".join(parts) + " (forward / forward+backward)"
