"""One update of each JAX agent against its PyTorch port on the same device, state, batch and
random draws: losses and gradient norms compared to float32 rounding (``mlr-jax bench
--parity``, the first check ``benchmarks/gpu_check.sh`` runs on an accelerator; the CPU
parity tests in ``tests/bench/test_torch_port.py`` build their updates here too).

* Atari: the JAX ``train_step`` draws its augmentation and mask inside, so both sides get them
  switched off through the config (``shift_pad=0``, ``intensity_scale=0``, mask ratio 0 with
  the ``mask_floor`` rule, which keeps the un-scaled 0-255 masked branch); the head noise is
  copied into torch from the state's keys; a small clip norm makes both clip groups clip.
* DMC: the agent's public ``update_*`` functions take pre-augmented inputs and explicit policy
  noise, so both sides get the SAME random crops, mask, intensity and noise (drawn by torch).

Both sides compute in float32 for the comparison: JAX at ``run.precision=fp32`` (XLA's
highest matmul precision), torch with TF32 off (accelerators otherwise round matmul or
convolution inputs to 10 bits).
Each value must agree within :data:`PARITY_RTOL`: sums over a batch or ~1e5 gradient
elements reduced in another order agree to about ``sqrt(N) * 6e-8`` relative, ~1e-5.
"""

from __future__ import annotations

import datetime
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mlr_jax import host, parallel
from mlr_jax.agents.common import at_precision, precision_record
from mlr_jax.bench.runner import _check_args, random_batch, torch_tf32
from mlr_jax.bench.timing import DEFAULT_OUTDIR, write_record
from mlr_jax.config import AtariConfig, DMCConfig, make_config, to_dict

PARITY_RTOL = 1e-4
NUM_ACTIONS = 6  # Pong's
ACTION_DIM = 2  # a DMC task's (cartpole has 1; 2 exercises the per-dimension terms)
NO_RANDOMNESS = ["shift_pad=0", "intensity_scale=0", "mlr.mask_ratio=0",
                 "mlr.mask_count_rule=mask_floor"]
# the objective's own clip group (the encoder + head group is "grad_norm")
AUX_CLIP_GROUP = {"mlr": "decoder_grad_norm", "spr": "dynamics_grad_norm", "none": None}


def atari_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> AtariConfig:
    """The Atari comparison's config: full float32, no augmentation or mask, clip norm 0.5
    (both groups clip)."""
    return make_config("atari", "pong", preset,
                       ["run.precision=fp32", *NO_RANDOMNESS, "clip_norm=0.5", *overrides])


def dmc_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> DMCConfig:
    """The DMC comparison's config: full float32, the MLR learning rate past its warm-up's
    first step."""
    return make_config("dmc", "cartpole_swingup", preset,
                       ["run.precision=fp32", "aux_warmup_steps=1", *overrides])


def atari_batch(cfg: AtariConfig, seed: int) -> Any:
    """A random batch with a done at s_t in every third sample (discount 0) and one two steps
    later in the second (SPR's rollout is masked from there)."""
    batch = random_batch(cfg, NUM_ACTIONS, seed)
    terminal = np.arange(cfg.batch_size) % 3 == 0
    first_done = np.where(terminal, 0, batch.first_done)
    first_done[1] = 2
    return batch._replace(discounts=np.where(terminal, 0.0, batch.discounts).astype(np.float32),
                          first_done=first_done.astype(np.int32))


def dmc_batch(cfg: DMCConfig, seed: int) -> Any:
    sac, seq = random_batch(cfg, ACTION_DIM, seed)
    return sac._replace(discount=(np.arange(cfg.batch_size) % 4 != 0).astype(np.float32)), seq


def torch_device(device: str) -> str:
    return "cuda" if device == "gpu" else "cpu"


def atari_jax_step(cfg: AtariConfig, seed: int = 3) -> tuple[Any, Any, Any, dict]:
    """(batch, state, state after one JAX update, its metrics)."""
    from mlr_jax.agents.atari import make_agent

    agent = make_agent(cfg, NUM_ACTIONS)
    state = agent.init(jax.random.PRNGKey(seed))
    batch = atari_batch(cfg, seed)
    new_state, metrics = agent.train_step(state, jax.tree.map(jnp.asarray, batch),
                                          jax.random.PRNGKey(seed + 1))
    return batch, state, new_state, metrics


def atari_torch_twin(cfg: AtariConfig, state: Any, new_state: Any, device: str = "cpu") -> tuple[Any, dict]:
    """The torch update with ``state``'s weights and the head noise the JAX step used (online:
    the step's key, kept as ``new_state.noise_key``; target: the state's key), and the fixed
    inputs of its ``update`` (no mask, no augmentation)."""
    import torch

    from mlr_jax.bench import torch_atari

    update = torch_atari.make_update(cfg, NUM_ACTIONS, torch_device(device))
    update.load_jax_state(state)
    torch_atari.load_jax_noise(update.model.net, new_state.noise_key)
    torch_atari.load_jax_noise(update.target.net, state.target_noise_key)
    no_mask = torch.ones(cfg.mlr.seq_len, cfg.image_size, cfg.image_size, device=torch_device(device))
    return update, {"mask": no_mask, "augment": False}


def _atari_pairs(cfg: AtariConfig, device: str) -> list[tuple[str, float, float]]:
    batch, state, new_state, metrics = atari_jax_step(cfg)
    update, fixed = atari_torch_twin(cfg, state, new_state, device)
    out = update.update(batch, resample_noise=False, **fixed)
    names = [("loss", "total"), ("rl_loss", "rl_loss"), ("grad_norm", "grad_norm")]
    if cfg.aux != "none":
        names += [(f"{cfg.aux}_loss", f"{cfg.aux}_loss"), (AUX_CLIP_GROUP[cfg.aux],) * 2]
    return [(mine, float(metrics[mine]), float(out[theirs])) for mine, theirs in names]


def dmc_one_update(cfg: DMCConfig, device: str = "cpu") -> tuple[Any, Any, Any, dict, dict]:
    """Both DMC updates from the same initial state on the same inputs: critic, MLR and
    actor/alpha steps and the EMAs, with the crops, mask, intensity and policy noise torch drew.
    Returns (the torch inputs, the torch update after it, its values by name, the JAX state
    after, the JAX values by name)."""
    import torch

    from mlr_jax.agents import dmc as jax_dmc, dmc_aux
    from mlr_jax.bench import torch_dmc

    nets = jax_dmc.build_networks(cfg, ACTION_DIM)
    state = jax_dmc.init(nets, jax.random.PRNGKey(0))
    update = torch_dmc.make_update(cfg, ACTION_DIM, torch_device(device))
    update.load_jax_state(state)
    torch.manual_seed(0)
    inp = update.prepare(dmc_batch(cfg, seed=0))
    critic_noise, actor_noise = torch.randn(2, cfg.batch_size, ACTION_DIM, device=update.device)
    out = update.update_inputs(inp, critic_noise, actor_noise)

    def j(x):
        return jnp.asarray(x.detach().cpu().numpy())

    def jitted(fn):
        return jax.jit(at_precision(functools.partial(fn, nets), cfg.run.precision))

    state, m_critic = jitted(jax_dmc.update_critic)(
        state, j(inp.obs), j(inp.action), j(inp.reward[:, 0]), j(inp.discount[:, 0]),
        j(inp.next_obs), j(critic_noise))
    state, m_mlr = jitted(dmc_aux.update_mlr)(state, j(inp.masked_seq), j(inp.target_seq),
                                             j(inp.seq_action))
    state, m_actor = jitted(jax_dmc.update_actor_and_alpha)(state, j(inp.obs), j(actor_noise))
    state = jitted(jax_dmc.update_targets)(state)
    metrics = {"critic_loss": m_critic["critic_loss"], "mlr_loss": m_mlr["mlr_loss"],
               "mlr_grad_norm": m_mlr["mlr_grad_norm"], "actor_loss": m_actor["actor_loss"],
               "alpha_loss": m_actor["alpha_loss"]}
    return inp, update, {k: float(v) for k, v in out.items()}, state, metrics


def _dmc_pairs(cfg: DMCConfig, device: str) -> list[tuple[str, float, float]]:
    _, _, out, _, metrics = dmc_one_update(cfg, device)
    return [(name, float(value), out[name]) for name, value in metrics.items()]


def run_parity(domain: str, device: str = "cpu", preset: str = "paper",
               outdir: str | os.PathLike = DEFAULT_OUTDIR,
               overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Compare one JAX update with the PyTorch port's on ``device``; returns (and writes to
    ``outdir/parity_<domain>_<preset>[-<aux>]_<device>_<YYYYmmdd-HHMMSS>.json``) the record:
    per value ``{jax, torch, rel_diff}``, ``rtol`` and ``ok`` (every value within it)."""
    _check_args(domain, device, ("jax", "torch"), 1, 0)
    cfg = atari_config(preset, overrides) if domain == "atari" else dmc_config(preset, overrides)
    with torch_tf32(False):  # and run.precision=fp32 on the JAX side
        pairs = _atari_pairs(cfg, device) if domain == "atari" else _dmc_pairs(cfg, device)
    values = {name: {"jax": a, "torch": b, "rel_diff": abs(a - b) / max(abs(b), 1e-30)}
              for name, a, b in pairs}
    ok = all(v["rel_diff"] <= PARITY_RTOL for v in values.values())
    worst = max(values, key=lambda k: values[k]["rel_diff"])
    summary = (f"{domain}/{preset} parity on {parallel.device_description()}: "
               f"{'ok' if ok else 'MISMATCH'}, {len(values)} values, largest relative difference "
               f"{values[worst]['rel_diff']:.2g} ({worst}; bound {PARITY_RTOL:g})")
    record = {"kind": "parity", "domain": domain, "preset": preset, "device_kind": device,
              "device": parallel.device_description(), "host": host.describe(),
              "versions": host.versions(),
              "precision": {**precision_record(cfg.run.precision), "torch_tf32": False},
              "config": to_dict(cfg),
              "overrides": list(overrides), "values": values, "rtol": PARITY_RTOL, "ok": ok,
              "summary": summary,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    aux = f"-{cfg.aux}" if domain == "atari" else ""
    return write_record(record, outdir, f"parity_{domain}_{preset}{aux}_{device}")
