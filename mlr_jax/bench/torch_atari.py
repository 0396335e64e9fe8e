"""Eager fp32 PyTorch port of one MLR update on Atari, as the authors' code runs it.

This module exists only to measure the reference implementation's speed on the same shapes
and hyper-parameters as the JAX agent (``mlr_jax.bench.runner``) and to check that both compute
the same losses (``tests/bench/test_torch_port.py``). It imports torch at module level: import
it lazily, torch is an optional extra (``benchmarks/requirements-torch.txt``).

The first section holds the building blocks shared with :mod:`mlr_jax.bench.torch_dmc`
(transformer block, position table, augmentations, cube mask, normalised MSE, Flax-to-torch
weight copies). Then the Atari model and :func:`make_update`.

One update follows the authors' ``PVCategoricalDQN.optimize_agent`` / ``PVCatDqnModel.forward``:

1. resample the online head's noise;
2. RL input ``obs[:, 0] / 255`` -> shift + intensity -> online Q log-probabilities (with grad);
3. cube mask (one per update, ones = kept) on the raw uint8 frames ``obs[:, :K]``; the masked
   frames stay 0-255 (``cfg.scale_masked_input`` divides them by 255), the target frames are
   /255; each branch draws its own shift + intensity per frame;
4. momentum encoder + renormalise on the target frames and momentum projection (no grad);
   online encoder on the masked frames, + position, action tokens ``Linear(one_hot(a)) +
   position``, transformer, projection (the first value/advantage layers of the head, noise
   off), predictor ``Linear(512, 512)``; loss ``||n(p) - n(t)||^2`` per step and sample;
5. momentum copy of the online encoder + head (tau 1) BEFORE the optimiser step;
6. C51 loss to the projected 10-step double-DQN target: online net (its noise) picks the
   argmax on an augmented ``obs[:, n]``, the target net (its own noise buffers) evaluates an
   independently augmented ``obs[:, n]``; KL priorities;
7. ``mean(w * rl) + weight * mean(w * mlr)``, backward, clip 10 on conv + head, clip 10 on the
   transformer (action embedding and predictor are not clipped), Adam step;
8. target network := full copy of the online model (rlpyt copies the whole state dict,
   transformer and noise buffers included).

With ``cfg.aux == "spr"`` step 4 is SPR's instead (mila-iqia/spr ``SPRCatDqnModel.forward``
and ``do_spr_loss``): the transition model (conv3x3 on ``[latent, one-hot action]`` ->
ReLU -> BatchNorm in training mode -> conv3x3 -> ReLU -> renormalise) rolls the online
latent of the RL input forward ``spr.jumps`` steps; projection + predictor of each step against
the momentum encoder + projection on the augmented ``obs[:, k]``; per sample the mean over
k = 1..K of ``nonterminal_k * ||n(p) - n(t)||^2``; the transition model is its own clip group
and the total is ``mean(w * rl) + spr.weight * mean(w * spr)``.

Deliberate omissions (no effect on the losses): the authors' unused dynamics models and
reward predictor (the latter runs a tiny forward whose output is discarded; SPR's reward loss
has weight 0).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mlr_jax.config import AtariConfig

# ============================================================== shared building blocks


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """Sinusoidal position table f32[length, dim]: sin on even, cos on odd features."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


class Attention(nn.Module):
    """Multi-head self-attention, qkv without bias, no mask."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] -> [B, N, D]."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        attn = ((query * query.shape[-1] ** -0.5) @ key.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ value).transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-LayerNorm transformer block with a GELU MLP (the authors' ViT block, no dropout)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def crop_at(x: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``x[N, C, H, W]`` to ``size x size`` at per-image offsets ``tops[N]``, ``lefts[N]``."""
    span = torch.arange(size, device=x.device)
    rows = (tops[:, None] + span)[:, :, None]  # [N, size, 1]
    cols = (lefts[:, None] + span)[:, None, :]  # [N, 1, size]
    index = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[index, :, rows, cols].permute(0, 3, 1, 2)  # [N, size, size, C] -> [N, C, size, size]


def random_crop(x: torch.Tensor, size: int, inclusive: bool = True) -> torch.Tensor:
    """Random ``size`` crop of ``x[N, C, H, W]``, offsets uniform in [0, H - size] per image
    (``inclusive=False``: [0, H - size), the DMC code's numpy crop of the SAC batch)."""
    n, _, height, width = x.shape
    last = 1 if inclusive else 0
    tops = torch.randint(0, max(1, height - size + last), (n,), device=x.device)
    lefts = torch.randint(0, max(1, width - size + last), (n,), device=x.device)
    return crop_at(x, tops, lefts, size)


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Replicate-pad ``x[N, C, H, W]`` by ``pad`` and crop back to H at a random offset."""
    return random_crop(F.pad(x, (pad,) * 4, mode="replicate"), x.shape[-1])


def intensity(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * (1 + scale * clip(N(0, 1), -2, 2))``, one draw per image of ``x[N, ...]``."""
    noise = torch.randn((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device)
    return x * (1.0 + scale * noise.clamp(-2.0, 2.0))


def cube_mask(seq_len: int, image_size: int, patch_size: int, block_size: int,
              num_masked: int, device: Any, batch_size: int | None = None) -> torch.Tensor:
    """Cube mask f32[T, H, W] (or [B, T, H, W]); 1 = kept pixel, ``num_masked`` cells hidden per block."""
    grid = image_size // patch_size
    lead = 1 if batch_size is None else batch_size
    blocks = seq_len // block_size
    ranks = torch.rand(lead, blocks, grid * grid, device=device).argsort(-1).argsort(-1)
    keep = (ranks >= num_masked).float().reshape(lead, blocks, grid, grid)
    keep = keep.repeat_interleave(patch_size, -2).repeat_interleave(patch_size, -1)
    mask = keep.repeat_interleave(block_size, 1)
    return mask[0] if batch_size is None else mask


def normalized_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||n(pred) - n(target)||^2`` over the last axis (= 2 - 2 cos), eps 1e-3 like the code."""
    pred = F.normalize(pred.float(), p=2.0, dim=-1, eps=1e-3)
    target = F.normalize(target.float(), p=2.0, dim=-1, eps=1e-3)
    return (pred - target).pow(2).sum(-1)


def num_masked_cells(image_size: int, patch_size: int, ratio: float, rule: str) -> int:
    """Masked cells per block: ``keep_floor`` (Atari code) or ``mask_floor`` (DMC code)."""
    cells = (image_size // patch_size) ** 2
    floor = math.floor(ratio * cells)
    return cells - floor if rule == "keep_floor" else floor


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def to_tensor(x: Any, device: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host array -> tensor on ``device`` (one host-to-device copy, like ``.to(device)``)."""
    tensor = torch.as_tensor(np.asarray(x))
    return tensor.to(device=device, dtype=dtype or tensor.dtype, non_blocking=False)


@torch.no_grad()
def copy_into(param: torch.Tensor, value: Any, name: str) -> None:
    """Copy a host array into a torch parameter/buffer, failing with both shapes on a mismatch."""
    value = torch.from_numpy(np.array(value, dtype=np.float32))
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"{name}: JAX shape {tuple(value.shape)} != torch shape {tuple(param.shape)}")
    param.copy_(value)


def load_dense(linear: nn.Linear, params: Mapping[str, Any], name: str) -> None:
    """Flax Dense (kernel [in, out], bias [out]) -> torch Linear (weight [out, in])."""
    copy_into(linear.weight, np.asarray(params["kernel"]).T, f"{name}/kernel")
    if linear.bias is not None:
        copy_into(linear.bias, params["bias"], f"{name}/bias")


def load_conv(conv: nn.Conv2d, params: Mapping[str, Any], name: str) -> None:
    """Flax Conv (kernel HWIO) -> torch Conv2d (weight OIHW)."""
    copy_into(conv.weight, np.transpose(np.asarray(params["kernel"]), (3, 2, 0, 1)), f"{name}/kernel")
    copy_into(conv.bias, params["bias"], f"{name}/bias")


def load_layer_norm(norm: nn.LayerNorm | nn.BatchNorm2d, params: Mapping[str, Any], name: str) -> None:
    """Flax LayerNorm / :class:`~mlr_jax.nets.atari.BatchNorm2d` (scale, bias) -> torch."""
    copy_into(norm.weight, params["scale"], f"{name}/scale")
    copy_into(norm.bias, params["bias"], f"{name}/bias")


def load_blocks(blocks: nn.ModuleList, params: Mapping[str, Any]) -> None:
    """``PredictiveLatentDecoder`` params (``block_{i}/...``) -> a list of :class:`Block`."""
    for i, block in enumerate(blocks):
        p = params[f"block_{i}"]
        load_layer_norm(block.norm1, p["norm1"], f"block_{i}/norm1")
        load_dense(block.attn.qkv, p["attn"]["qkv"], f"block_{i}/attn/qkv")
        load_dense(block.attn.proj, p["attn"]["proj"], f"block_{i}/attn/proj")
        load_layer_norm(block.norm2, p["norm2"], f"block_{i}/norm2")
        load_dense(block.fc1, p["fc1"], f"block_{i}/fc1")
        load_dense(block.fc2, p["fc2"], f"block_{i}/fc2")


def sync(device: torch.device) -> None:
    """Wait for queued device work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ============================================================== Atari model


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (the dueling head's 1/sqrt(2))."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class NoisyLinear(nn.Module):
    """Factorised-Gaussian noisy linear layer; the noise vectors are buffers (copied with the
    state dict, as rlpyt does) and are redrawn by :meth:`reset_noise`."""

    def __init__(self, in_features: int, out_features: int, std_init: float):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.weight_sigma = nn.Parameter(torch.full((out_features, in_features), std_init * bound))
        self.bias_mu = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.bias_sigma = nn.Parameter(torch.full((out_features,), std_init / math.sqrt(out_features)))
        self.register_buffer("eps_in", torch.zeros(in_features))
        self.register_buffer("eps_out", torch.zeros(out_features))
        self.reset_noise()

    @staticmethod
    def _scaled(n: int, device: Any) -> torch.Tensor:
        x = torch.randn(n, device=device)
        return x.sign() * x.abs().sqrt()

    def reset_noise(self) -> None:
        self.eps_in.copy_(self._scaled(self.eps_in.numel(), self.eps_in.device))
        self.eps_out.copy_(self._scaled(self.eps_out.numel(), self.eps_out.device))

    def forward(self, x: torch.Tensor, noisy: bool) -> torch.Tensor:
        if not noisy:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        return F.linear(x, weight, self.bias_mu + self.bias_sigma * self.eps_out)


def renormalize(x: torch.Tensor) -> torch.Tensor:
    """Per sample ``(x - min) / (max - min)`` over all features of ``x[N, ...]``."""
    flat = x.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(x)


class AtariQNet(nn.Module):
    """Nature CNN + renormalise + noisy dueling C51 head (the part the RL target copies)."""

    def __init__(self, cfg: AtariConfig, num_actions: int):
        super().__init__()
        layers, in_ch, size = [], cfg.frame_stack, cfg.image_size
        for out_ch, kernel, stride in zip(cfg.channels, cfg.kernels, cfg.strides):
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride), nn.ReLU()]
            in_ch, size = out_ch, (size - kernel) // stride + 1
        self.conv = nn.Sequential(*layers)
        self.latent_dim = in_ch * size * size
        self.renorm = cfg.renormalize
        self.num_actions, self.num_atoms = num_actions, cfg.num_atoms
        self.grad_scale = cfg.head_grad_scale
        h, std = cfg.hidden_size, cfg.noisy_std
        self.value_hidden = NoisyLinear(self.latent_dim, h, std)
        self.value_out = NoisyLinear(h, cfg.num_atoms, std)
        self.adv_hidden = NoisyLinear(self.latent_dim, h, std)
        self.adv_out = NoisyLinear(h, num_actions * cfg.num_atoms, std)
        self.adv_bias = nn.Parameter(torch.zeros(cfg.num_atoms))

    def noisy_layers(self) -> list[NoisyLinear]:
        return [self.value_hidden, self.value_out, self.adv_hidden, self.adv_out]

    def reset_noise(self) -> None:
        for layer in self.noisy_layers():
            layer.reset_noise()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: f32[N, C, H, W] -> latents f32[N, D] (C,H,W flatten order)."""
        out = self.conv(x)
        return (renormalize(out) if self.renorm else out).flatten(1)

    def log_probs(self, latent: torch.Tensor, noisy: bool) -> torch.Tensor:
        """latent: [N, D] -> log-probabilities f32[N, A, atoms]."""
        x = _ScaleGrad.apply(latent, self.grad_scale)
        value = self.value_out(F.relu(self.value_hidden(x, noisy)), noisy)[:, None]
        adv = self.adv_out(F.relu(self.adv_hidden(x, noisy)), noisy)
        adv = adv.view(-1, self.num_actions, self.num_atoms) + self.adv_bias
        return F.log_softmax(value + adv - adv.mean(1, keepdim=True), dim=-1)

    def projection(self, latent: torch.Tensor) -> torch.Tensor:
        """MLR projection: first value and advantage layers, noise off -> [N, 2 * hidden]."""
        return torch.cat([self.value_hidden(latent, False), self.adv_hidden(latent, False)], -1)


class TransitionModel(nn.Module):
    """SPR's ``TransitionModel(blocks=0, norm_type="bn", residual=False)`` on [N, C, h, w]."""

    def __init__(self, channels: int, num_actions: int, renorm: bool):
        super().__init__()
        self.num_actions, self.renorm = num_actions, renorm
        self.conv_0 = nn.Conv2d(channels + num_actions, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.conv_1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, latent: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """latent f32[N, C, h, w], action long[N] -> f32[N, C, h, w]."""
        one_hot = torch.zeros(latent.shape[0], self.num_actions, *latent.shape[2:],
                              device=latent.device)
        one_hot[torch.arange(latent.shape[0], device=latent.device), action] = 1.0
        x = self.conv_1(self.norm(F.relu(self.conv_0(torch.cat([latent, one_hot], 1)))))
        x = F.relu(x)
        return renormalize(x) if self.renorm else x


class AtariModel(nn.Module):
    """Online model: Q network, predictor and the objective's modules: MLR's predictive latent
    decoder and action embedding (no blocks otherwise), SPR's transition model."""

    def __init__(self, cfg: AtariConfig, num_actions: int):
        super().__init__()
        m = cfg.mlr
        self.net = AtariQNet(cfg, num_actions)
        dim = self.net.latent_dim
        layers = m.num_layers if cfg.aux == "mlr" else 0
        self.transformer = nn.ModuleList(Block(dim, m.num_heads, m.mlp_ratio) for _ in range(layers))
        self.action_embedding = nn.Linear(num_actions, dim)
        self.predictor = nn.Linear(2 * cfg.hidden_size, 2 * cfg.hidden_size)
        self.register_buffer("position", sinusoidal_table(m.seq_len, dim))
        self.dynamics = (TransitionModel(cfg.channels[-1], num_actions, cfg.renormalize)
                         if cfg.aux == "spr" else None)

    def decode(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """latents f32[B, T, D], actions long[B, T] -> predictions f32[B, T, 2 * hidden]."""
        seq_len = latents.shape[1]
        tokens = self.action_embedding(F.one_hot(actions, self.net.num_actions).float())
        x = torch.cat([latents + self.position, tokens + self.position], 1)
        for block in self.transformer:
            x = block(x)
        return self.predictor(self.net.projection(x[:, :seq_len]))


# ============================================================== update


class AtariInputs(NamedTuple):
    """Pre-augmented float inputs of one update (``B`` batch, ``T`` = mlr.seq_len).

    rl_obs, next_online, next_target: f32[B, C, H, W] (0-1 scale) for the online Q, the
    double-DQN argmax and the target evaluation; masked_seq f32[B, T, C, H, W] (masked, then
    augmented; 0-255 unless ``scale_masked_input``; MLR only); target_seq f32[B, T, C, H, W]
    (0-1; SPR: the K frames ``obs[:, 1:K+1]``); nonterminal f32[B, K] (SPR only).
    actions long[B, L]; returns, discounts, weights f32[B].
    """

    rl_obs: torch.Tensor
    next_online: torch.Tensor
    next_target: torch.Tensor
    masked_seq: torch.Tensor | None
    target_seq: torch.Tensor | None
    nonterminal: torch.Tensor | None
    actions: torch.Tensor
    returns: torch.Tensor
    discounts: torch.Tensor
    weights: torch.Tensor


class AtariUpdate:
    """Online model, RL target, momentum copy, Adam: one ``update(batch)`` = one gradient step.

    Use :func:`make_update`. ``batch`` is an ``AtariBatch`` (numpy, see docs/design.md).
    """

    EPS = 1e-6  # the authors' NaN guard on the KL priorities

    def __init__(self, cfg: AtariConfig, num_actions: int, device: Any = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.aux = cfg.aux
        self.aux_weight = {"mlr": cfg.mlr.weight, "spr": cfg.spr.weight, "none": 0.0}[cfg.aux]
        self.model = AtariModel(cfg, num_actions).to(self.device)
        self.target = copy.deepcopy(self.model).requires_grad_(False)
        self.momentum = copy.deepcopy(self.model.net).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.atoms = torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms, device=self.device)
        self.num_masked = num_masked_cells(cfg.image_size, cfg.mlr.patch_size, cfg.mlr.mask_ratio,
                                           cfg.mlr.mask_count_rule)

    # ---------------------------------------------------------------- inputs
    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Shift + intensity, one draw per frame of ``x[..., C, H, W]``."""
        flat = x.reshape(-1, *x.shape[-3:])
        out = intensity(random_shift(flat, self.cfg.shift_pad), self.cfg.intensity_scale)
        return out.view_as(x)

    def draw_mask(self, batch_size: int) -> torch.Tensor:
        """One cube mask per update (or per sample with ``mlr.mask_per_sample``); 1 = kept."""
        m = self.cfg.mlr
        return cube_mask(m.seq_len, self.cfg.image_size, m.patch_size, m.block_size, self.num_masked,
                         self.device, batch_size if m.mask_per_sample else None)

    def prepare(self, batch: Any, mask: torch.Tensor | None = None, augment: bool = True) -> AtariInputs:
        """Move ``batch`` to the device and build every branch's input.

        Args:
          batch: AtariBatch with obs u8[B, L, C, H, W], actions [B, L], returns, discounts,
            weights [B].
          mask: f32[T, H, W] or f32[B, T, H, W] (1 = kept); None draws one.
          augment: False replaces shift + intensity by the identity (for equivalence tests).
        """
        obs = to_tensor(batch.obs, self.device)
        aug = self._augment if augment else (lambda x: x)
        masked_seq = target_seq = nonterminal = None
        if self.aux == "mlr":
            seq = obs[:, :self.cfg.mlr.seq_len].float()
            if mask is None:
                mask = self.draw_mask(obs.shape[0])
            masked = seq * mask[..., None, :, :]
            masked_seq = aug(masked / 255.0 if self.cfg.scale_masked_input else masked)
            target_seq = aug(seq / 255.0)
        elif self.aux == "spr":
            jumps = self.cfg.spr.jumps
            target_seq = aug(obs[:, 1:jumps + 1].float() / 255.0)
            first_done = to_tensor(batch.first_done, self.device, torch.long)
            # the code's 1 - sign(cumsum(done)): 0 from the first done on
            steps = torch.arange(1, jumps + 1, device=self.device)
            nonterminal = (steps[None, :] < first_done[:, None]).float()
        scaled = obs.float() / 255.0
        n = self.cfg.n_step
        return AtariInputs(
            rl_obs=aug(scaled[:, 0]), next_online=aug(scaled[:, n]), next_target=aug(scaled[:, n]),
            masked_seq=masked_seq, target_seq=target_seq, nonterminal=nonterminal,
            actions=to_tensor(batch.actions, self.device, torch.long),
            returns=to_tensor(batch.returns, self.device, torch.float32),
            discounts=to_tensor(batch.discounts, self.device, torch.float32),
            weights=to_tensor(batch.weights, self.device, torch.float32))

    # ---------------------------------------------------------------- losses
    def _projected_target(self, inp: AtariInputs, noisy: bool) -> torch.Tensor:
        """Double-DQN C51 target projected on the support: f32[B, atoms] (no grad)."""
        cfg, z = self.cfg, self.atoms
        with torch.no_grad():
            next_z = (inp.returns[:, None] + inp.discounts[:, None] * z).clamp(cfg.v_min, cfg.v_max)
            delta = (cfg.v_max - cfg.v_min) / (cfg.num_atoms - 1)
            coeffs = (1 - (next_z[:, None, :] - z[None, :, None]).abs() / delta).clamp(0, 1)
            online_p = self.model.net.log_probs(self.model.net.features(inp.next_online), noisy).exp()
            next_a = (online_p * z).sum(-1).argmax(-1)
            target_p = self.target.net.log_probs(self.target.net.features(inp.next_target), noisy).exp()
            chosen = target_p[torch.arange(len(next_a), device=self.device), next_a]
            return (chosen[:, None, :] * coeffs).sum(-1)

    def _mlr_per_sample(self, inp: AtariInputs) -> torch.Tensor:
        """Normalised MSE averaged over time: f32[B]."""
        batch, seq_len = inp.target_seq.shape[:2]
        with torch.no_grad():
            targets = self.momentum.projection(self.momentum.features(inp.target_seq.flatten(0, 1)))
        latents = self.model.net.features(inp.masked_seq.flatten(0, 1)).view(batch, seq_len, -1)
        preds = self.model.decode(latents, inp.actions[:, :seq_len])
        return normalized_mse(preds.flatten(0, 1), targets).view(batch, seq_len).mean(1)

    def _spr_per_sample(self, inp: AtariInputs, latent: torch.Tensor) -> torch.Tensor:
        """Rollout from the RL input's latent; masked normalised MSE averaged over k: f32[B]."""
        batch, jumps = inp.target_seq.shape[:2]
        with torch.no_grad():
            targets = self.momentum.projection(self.momentum.features(inp.target_seq.flatten(0, 1)))
        z = latent.view(batch, self.cfg.channels[-1], -1)
        side = int(round(math.sqrt(z.shape[-1])))
        z = z.view(batch, -1, side, side)
        rollout = []
        for k in range(jumps):
            z = self.model.dynamics(z, inp.actions[:, k])
            rollout.append(z.flatten(1))
        preds = self.model.predictor(self.model.net.projection(torch.stack(rollout, 1)))
        per_step = normalized_mse(preds.flatten(0, 1), targets).view(batch, jumps)
        return (inp.nonterminal * per_step).mean(1)

    def loss_terms(self, inp: AtariInputs, noisy: bool = True) -> dict[str, torch.Tensor]:
        """Losses at the current weights, with the current noise buffers.

        Args:
          inp: see :class:`AtariInputs` (build with :meth:`prepare`).
          noisy: False evaluates every noisy layer at its mean (for equivalence tests).

        Returns:
          ``rl_loss`` = mean(w * CE), ``total``, per-sample ``rl_per_sample``, KL
          ``priorities`` and, with an objective, ``<aux>_loss`` = mean(w * aux) and
          ``<aux>_per_sample``.
        """
        target_p = self._projected_target(inp, noisy)
        latent = self.model.net.features(inp.rl_obs)
        log_p = self.model.net.log_probs(latent, noisy)
        log_p = log_p[torch.arange(len(log_p), device=self.device), inp.actions[:, 0]]
        rl = -(target_p * log_p).sum(1)
        clamped = target_p.clamp(self.EPS, 1)
        kl = (clamped * (clamped.log() - log_p.detach())).sum(1).clamp(self.EPS, 1 / self.EPS)
        rl_loss = (inp.weights * rl).mean()
        terms = {"rl_loss": rl_loss, "total": rl_loss, "rl_per_sample": rl, "priorities": kl}
        if self.aux != "none":
            aux = (self._mlr_per_sample(inp) if self.aux == "mlr"
                   else self._spr_per_sample(inp, latent))
            aux_loss = (inp.weights * aux).mean()
            terms |= {f"{self.aux}_loss": aux_loss, f"{self.aux}_per_sample": aux,
                      "total": rl_loss + self.aux_weight * aux_loss}
        return terms

    # ---------------------------------------------------------------- update
    @torch.no_grad()
    def _momentum_update(self) -> None:
        tau = self.cfg.momentum_tau
        if tau == 1.0:
            self.momentum.load_state_dict(self.model.net.state_dict())
        else:
            for p_m, p_o in zip(self.momentum.parameters(), self.model.net.parameters()):
                p_m.lerp_(p_o, tau)

    @torch.no_grad()
    def _target_update(self) -> None:
        tau = self.cfg.target_tau
        if tau == 1.0:
            self.target.load_state_dict(self.model.state_dict())
        else:
            for p_t, p_o in zip(self.target.parameters(), self.model.parameters()):
                p_t.lerp_(p_o, tau)

    def update(self, batch: Any, resample_noise: bool = True,
               **prepare_kwargs: Any) -> dict[str, torch.Tensor]:
        """One gradient update in the authors' order; returns the (device) loss terms.

        ``resample_noise=False`` keeps the online noise buffers as set (e.g. by
        :func:`load_jax_noise`); ``prepare_kwargs`` (``mask``, ``augment``) go to :meth:`prepare`.
        """
        if resample_noise:
            self.model.net.reset_noise()
        terms = self.loss_terms(self.prepare(batch, **prepare_kwargs))
        if self.aux != "none":
            self._momentum_update()
        self.optimizer.zero_grad()
        terms["total"].backward()
        clip = self.cfg.clip_norm
        terms["grad_norm"] = nn.utils.clip_grad_norm_(self.model.net.parameters(), clip)
        if self.aux == "mlr":
            terms["decoder_grad_norm"] = nn.utils.clip_grad_norm_(self.model.transformer.parameters(), clip)
        if self.aux == "spr":
            terms["dynamics_grad_norm"] = nn.utils.clip_grad_norm_(self.model.dynamics.parameters(), clip)
        self.optimizer.step()
        self._target_update()
        return {k: v.detach() for k, v in terms.items()}

    @torch.no_grad()
    def act(self, obs: Any) -> torch.Tensor:
        """Greedy action on the expected Q with the latest noise: obs u8[N, C, H, W] -> long[N]."""
        x = to_tensor(obs, self.device).float() / 255.0
        probs = self.model.net.log_probs(self.model.net.features(x), True).exp()
        return (probs * self.atoms).sum(-1).argmax(-1)

    def param_counts(self) -> dict[str, int]:
        counts = {"q_network": count_parameters(self.model.net),
                  "decoder": count_parameters(self.model.transformer),
                  "total": count_parameters(self.model)}
        if self.model.dynamics is not None:
            counts["dynamics"] = count_parameters(self.model.dynamics)
        return counts

    # ---------------------------------------------------------------- JAX weights
    def load_jax_state(self, state: Any) -> None:
        """Copy an ``AtariState``'s online, RL-target and momentum params into the torch models."""
        load_jax_params(self.model, state.params)
        self.target.load_state_dict(self.model.state_dict())
        load_qnet(self.target.net, state.target_params)
        if self.aux != "none":
            self.momentum.load_state_dict(self.model.net.state_dict())
            load_qnet(self.momentum, state.aux_target, head=False)
            for name, layer in (("value_hidden", self.momentum.value_hidden),
                                ("advantage_hidden", self.momentum.adv_hidden)):
                load_noisy(layer, state.aux_target["projection"][name], f"projection/{name}")


def make_update(cfg: AtariConfig, num_actions: int, device: Any = "cpu") -> AtariUpdate:
    """The torch Atari update for ``cfg`` (the same dataclass the JAX agent reads)."""
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")
    return AtariUpdate(cfg, num_actions, device)


# ============================================================== Flax -> torch weights


def load_noisy(layer: NoisyLinear, params: Mapping[str, Any], name: str) -> None:
    """``NoisyDense`` (kernel_mu/kernel_sigma [in, out]) -> :class:`NoisyLinear` ([out, in])."""
    copy_into(layer.weight_mu, np.asarray(params["kernel_mu"]).T, f"{name}/kernel_mu")
    copy_into(layer.weight_sigma, np.asarray(params["kernel_sigma"]).T, f"{name}/kernel_sigma")
    copy_into(layer.bias_mu, params["bias_mu"], f"{name}/bias_mu")
    copy_into(layer.bias_sigma, params["bias_sigma"], f"{name}/bias_sigma")


def load_qnet(net: AtariQNet, params: Mapping[str, Any], head: bool = True) -> None:
    """``{"encoder": NatureCNN params, "head": DuelingC51Head params}`` -> :class:`AtariQNet`."""
    convs = [layer for layer in net.conv if isinstance(layer, nn.Conv2d)]
    for i, conv in enumerate(convs):
        load_conv(conv, params["encoder"][f"conv_{i}"], f"encoder/conv_{i}")
    if not head:
        return
    layers = {"value_hidden": net.value_hidden, "value_out": net.value_out,
              "advantage_hidden": net.adv_hidden, "advantage_out": net.adv_out}
    for name, layer in layers.items():
        load_noisy(layer, params["head"][name], f"head/{name}")
    copy_into(net.adv_bias, params["head"]["advantage_bias"], "head/advantage_bias")


def load_jax_noise(net: AtariQNet, noise_key: Any) -> None:
    """Set ``net``'s noise buffers to the noise ``DuelingC51Head`` draws from ``noise_key``.

    Mirrors the head: ``jax.random.split(noise_key, 4)`` in the order value_hidden, value_out,
    advantage_hidden, advantage_out, each through ``factorised_noise``.
    """
    import jax

    from mlr_jax.nets.atari import factorised_noise

    for key, layer in zip(jax.random.split(noise_key, 4), net.noisy_layers()):
        eps_in, eps_out = factorised_noise(key, layer.eps_in.numel(), layer.eps_out.numel())
        copy_into(layer.eps_in, eps_in, "eps_in")
        copy_into(layer.eps_out, eps_out, "eps_out")


def load_jax_params(model: AtariModel, params: Mapping[str, Any]) -> None:
    """Copy the JAX Atari agent's online ``AtariState.params`` into ``model``.

    Mapping: ``encoder/conv_i`` (HWIO) -> ``net.conv`` (OIHW); ``head/{value,advantage}_{hidden,
    out}`` NoisyDense ([in, out]) -> NoisyLinear ([out, in]); ``head/advantage_bias``;
    ``decoder/block_i`` -> ``transformer[i]``; ``action_embedding``, ``predictor`` Dense ->
    Linear; ``dynamics/{conv_0, norm, conv_1}`` -> the transition model. Latents are flattened
    in C, H, W order on both sides, so no permutation is needed.
    """
    load_qnet(model.net, params)
    if "decoder" in params:
        load_blocks(model.transformer, params["decoder"])
        load_dense(model.action_embedding, params["action_embedding"], "action_embedding")
    if "dynamics" in params:
        dynamics = params["dynamics"]
        load_conv(model.dynamics.conv_0, dynamics["conv_0"], "dynamics/conv_0")
        load_layer_norm(model.dynamics.norm, dynamics["norm"], "dynamics/norm")
        load_conv(model.dynamics.conv_1, dynamics["conv_1"], "dynamics/conv_1")
    if "predictor" in params:
        load_dense(model.predictor, params["predictor"], "predictor")
