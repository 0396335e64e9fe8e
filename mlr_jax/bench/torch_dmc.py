"""Eager fp32 PyTorch port of one MLR update on DMControl (CURL-style SAC), as the authors' code
runs it. Import lazily: torch is an optional extra.

One agent step (``MTMSacAgent.update``) is, in order:

1. critic: SAC batch ``obs``/``next_obs`` random-cropped 100 -> 84 independently (0-255 floats,
   the encoder divides by 255); target ``r + discount * (min Q_target(s', a') - alpha log pi)``
   with ``a' ~ pi(s')``; loss ``mse(Q1) + mse(Q2)``; Adam step on the critic (encoder included);
2. MLR: cube mask (ones = kept; ``mask_floor`` hides 50 of 100 cells) on the 100x100 sequence
   frames, crop + intensity per frame, the critic's encoder, interleaved state/action tokens +
   position, transformer, projection -> predictor vs. the momentum encoder + momentum
   projection on independently augmented unmasked frames; ``mean ||n(p) - n(t)||^2``; its own
   Adam (lr ``aux_lr_scale * aux_lr`` times the inverse-square-root warm-up), clip 10 over all
   MLR parameters (critic encoder included);
3. every ``actor_update_freq`` steps: actor (encoder convs detached, shared with the critic)
   and temperature;
4. every ``target_update_freq`` steps: EMA of the critic Q heads (``critic_tau``), critic
   encoder (``encoder_tau``), momentum encoder and projection (``momentum_tau``).

Init follows the code: orthogonal Linear / delta-orthogonal conv for actor and critic; the MLR
module then re-initialises every Linear it contains (trunc-normal std 0.02 at +-1 std, zero bias,
LayerNorm (1, 0)), the critic's encoder Linear/LayerNorm included when
``cfg.reinit_encoder_linear``. The momentum projection has its own random init.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mlr_jax.bench.torch_atari import (Block, copy_into, count_parameters, cube_mask, intensity,
                                       load_blocks, load_conv, load_dense, load_layer_norm,
                                       normalized_mse, num_masked_cells, random_crop,
                                       sinusoidal_table, to_tensor)
from mlr_jax.config import DMCConfig

MLR_HIDDEN_DIM = 100  # hidden width of the MLR projection / predictor (official latent_dim)

# ============================================================== networks


def _orthogonal_init(module: nn.Module) -> None:
    """Orthogonal Linear, delta-orthogonal Conv (gain relu), zero biases (CURL's weight_init)."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
        mid = module.weight.shape[-1] // 2
        with torch.no_grad():
            nn.init.orthogonal_(module.weight[:, :, mid, mid], nn.init.calculate_gain("relu"))


def _trunc_normal_init(module: nn.Module) -> None:
    """The MLR module's re-init: Linear N(0, 0.02) truncated at +-0.02, zero bias; LN (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.02, b=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """``layers`` hidden ReLU layers then a linear output."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(hidden, out_dim))


class PixelEncoder(nn.Module):
    """CURL conv encoder: /255, 3x3 convs (first stride 2), Linear, LayerNorm (no tanh)."""

    def __init__(self, cfg: DMCConfig, in_channels: int):
        super().__init__()
        convs, size = [], cfg.crop_size
        for i in range(cfg.num_conv_layers):
            stride = 2 if i == 0 else 1
            convs.append(nn.Conv2d(in_channels if i == 0 else cfg.num_filters, cfg.num_filters, 3, stride))
            size = (size - 3) // stride + 1
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Linear(cfg.num_filters * size * size, cfg.feature_dim)
        self.ln = nn.LayerNorm(cfg.feature_dim)

    def forward(self, obs: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """obs: f32[N, C, 84, 84] in 0-255 -> f32[N, feature_dim]."""
        h = obs / 255.0
        for conv in self.convs:
            h = torch.relu(conv(h))
        h = h.flatten(1)
        return self.ln(self.fc(h.detach() if detach else h))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy on its own encoder head (convs tied to the critic's)."""

    def __init__(self, cfg: DMCConfig, in_channels: int, action_dim: int):
        super().__init__()
        self.encoder = PixelEncoder(cfg, in_channels)
        self.trunk = mlp(cfg.feature_dim, cfg.hidden_dim, 2 * action_dim)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max
        self.apply(_orthogonal_init)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None, detach: bool = False):
        """Returns ``(pi, log_pi, log_std)``; ``noise`` f32[N, A] (None draws N(0, 1))."""
        mu, log_std = self.trunk(self.encoder(obs, detach)).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1)
        noise = torch.randn_like(mu) if noise is None else noise
        pi = mu + noise * log_std.exp()
        log_pi = ((-0.5 * noise.pow(2) - log_std).sum(-1, keepdim=True)
                  - 0.5 * math.log(2 * math.pi) * mu.shape[-1])
        pi = torch.tanh(pi)
        log_pi = log_pi - torch.log(F.relu(1 - pi.pow(2)) + 1e-6).sum(-1, keepdim=True)
        return pi, log_pi, log_std


class Critic(nn.Module):
    """Encoder + two Q MLPs on ``[features, action]``."""

    def __init__(self, cfg: DMCConfig, in_channels: int, action_dim: int):
        super().__init__()
        self.encoder = PixelEncoder(cfg, in_channels)
        self.q1 = mlp(cfg.feature_dim + action_dim, cfg.hidden_dim, 1)
        self.q2 = mlp(cfg.feature_dim + action_dim, cfg.hidden_dim, 1)
        self.apply(_orthogonal_init)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, detach: bool = False):
        x = torch.cat([self.encoder(obs, detach), action], dim=-1)
        return self.q1(x), self.q2(x)


class MLRModule(nn.Module):
    """MLR parameters: the critic's encoder (shared), momentum encoder, decoder, action embedding,
    projection, momentum projection, predictor. ``parameters()`` is what the MLR Adam updates."""

    def __init__(self, cfg: DMCConfig, critic: Critic, action_dim: int):
        super().__init__()
        m, dim = cfg.mlr, cfg.feature_dim
        self.encoder = critic.encoder
        self.target_encoder = copy.deepcopy(critic.encoder).requires_grad_(False)
        self.projection = mlp(dim, MLR_HIDDEN_DIM, dim, layers=1)
        self.target_projection = mlp(dim, MLR_HIDDEN_DIM, dim, layers=1).requires_grad_(False)
        self.predictor = mlp(dim, MLR_HIDDEN_DIM, dim, layers=1)
        self.transformer = nn.ModuleList(Block(dim, m.num_heads, m.mlp_ratio) for _ in range(m.num_layers))
        self.action_emb = nn.Linear(action_dim, dim)
        self.register_buffer("position", sinusoidal_table(m.seq_len, dim))
        for name, child in self.named_children():
            if cfg.reinit_encoder_linear or name not in ("encoder", "target_encoder"):
                child.apply(_trunc_normal_init)

    def predict(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """latents f32[B, T, D], actions f32[B, T, A] -> predictions f32[B, T, D]."""
        batch, seq_len, dim = latents.shape
        tokens = torch.stack([latents + self.position, self.action_emb(actions) + self.position], 2)
        x = tokens.reshape(batch, 2 * seq_len, dim)
        for block in self.transformer:
            x = block(x)
        return self.predictor(self.projection(x[:, 0::2]))


def inverse_sqrt_warmup(step: int, warmup: int) -> float:
    """LR factor of the code's ``InverseSquareRootSchedule``: linear 5e-4 -> 1, then sqrt decay."""
    init = 5e-4
    if step < warmup:
        return init + (1 - init) / warmup * step
    return math.sqrt(warmup) / math.sqrt(step)


# ============================================================== update


class DMCInputs(NamedTuple):
    """Pre-augmented float inputs of one agent step (0-255 floats, 84x84 crops).

    obs, next_obs f32[B, C, 84, 84]; action f32[B, A]; reward, discount f32[B, 1];
    masked_seq, target_seq f32[Bs, T, C, 84, 84]; seq_action f32[Bs, T, A] (None without MLR).
    """

    obs: torch.Tensor
    next_obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    masked_seq: torch.Tensor | None
    target_seq: torch.Tensor | None
    seq_action: torch.Tensor | None


class DMCUpdate:
    """Actor, critic (+ target), MLR module, temperature and their Adams; :meth:`update` is one
    agent step. Use :func:`make_update`. ``batch`` is ``(SACBatch, SeqBatch)`` (docs/design.md)."""

    def __init__(self, cfg: DMCConfig, action_dim: int, device: Any = "cpu"):
        self.cfg, self.device, self.step = cfg, torch.device(device), 0
        self.use_mlr = cfg.aux == "mlr"
        channels = 3 * cfg.frame_stack
        self.actor = Actor(cfg, channels, action_dim).to(self.device)
        self.critic = Critic(cfg, channels, action_dim).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        for actor_conv, critic_conv in zip(self.actor.encoder.convs, self.critic.encoder.convs):
            actor_conv.weight, actor_conv.bias = critic_conv.weight, critic_conv.bias
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        self.target_entropy = -float(action_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr,
                                          betas=(cfg.actor_beta1, 0.999))
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr,
                                           betas=(cfg.critic_beta1, 0.999))
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, betas=(cfg.alpha_beta1, 0.999))
        self.mlr = MLRModule(cfg, self.critic, action_dim).to(self.device)
        self.mlr_params = [p for p in self.mlr.parameters() if p.requires_grad]
        self.mlr_opt = torch.optim.Adam(self.mlr_params, lr=cfg.aux_lr_scale * cfg.aux_lr)
        self.mlr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.mlr_opt, lambda s: inverse_sqrt_warmup(s, cfg.aux_warmup_steps))
        self.num_masked = num_masked_cells(cfg.image_size, cfg.mlr.patch_size, cfg.mlr.mask_ratio,
                                           cfg.mlr.mask_count_rule)

    # ---------------------------------------------------------------- inputs
    def draw_mask(self, batch_size: int) -> torch.Tensor:
        m = self.cfg.mlr
        return cube_mask(m.seq_len, self.cfg.image_size, m.patch_size, m.block_size, self.num_masked,
                         self.device, batch_size if m.mask_per_sample else None)

    def _augment_seq(self, x: torch.Tensor) -> torch.Tensor:
        """Crop + intensity per frame of ``x[B, T, C, H, W]``."""
        flat = intensity(random_crop(x.flatten(0, 1), self.cfg.crop_size), self.cfg.intensity_scale)
        return flat.unflatten(0, x.shape[:2])

    def prepare(self, batch: Any, mask: torch.Tensor | None = None) -> DMCInputs:
        """Move ``(SACBatch, SeqBatch)`` to the device and build the augmented inputs.

        Args:
          batch: ``(sac, seq)``: sac.obs/next_obs u8[B, C, 100, 100], action f32[B, A],
            reward f32[B], discount f32[B] (gamma-free continuation flag; ``cfg.gamma`` is
            applied here); seq.obs u8[Bs, T, C, 100, 100], seq.action f32[Bs, T, A].
          mask: f32[T, H, W] / f32[B, T, H, W] (1 = kept); None draws one.
        """
        sac, seq = batch
        size, inclusive = self.cfg.crop_size, self.cfg.sac_crop_rule == "inclusive"
        masked_seq = target_seq = seq_action = None
        if self.use_mlr:
            seq_obs = to_tensor(seq.obs, self.device).float()
            if mask is None:
                mask = self.draw_mask(seq_obs.shape[0])
            masked_seq = self._augment_seq(seq_obs * mask[..., None, :, :])
            target_seq = self._augment_seq(seq_obs)
            seq_action = to_tensor(seq.action, self.device, torch.float32)
        return DMCInputs(
            obs=random_crop(to_tensor(sac.obs, self.device).float(), size, inclusive),
            next_obs=random_crop(to_tensor(sac.next_obs, self.device).float(), size, inclusive),
            action=to_tensor(sac.action, self.device, torch.float32),
            reward=to_tensor(sac.reward, self.device, torch.float32)[:, None],
            discount=to_tensor(sac.discount, self.device, torch.float32)[:, None],
            masked_seq=masked_seq, target_seq=target_seq, seq_action=seq_action)

    # ---------------------------------------------------------------- losses
    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def critic_loss(self, inp: DMCInputs, noise: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            next_pi, next_log_pi, _ = self.actor(inp.next_obs, noise)
            t1, t2 = self.critic_target(inp.next_obs, next_pi)
            value = torch.min(t1, t2) - self.alpha * next_log_pi
            target = inp.reward + inp.discount * self.cfg.gamma * value
        q1, q2 = self.critic(inp.obs, inp.action)
        return F.mse_loss(q1, target) + F.mse_loss(q2, target)

    def mlr_loss(self, inp: DMCInputs) -> torch.Tensor:
        batch, seq_len = inp.masked_seq.shape[:2]
        latents = self.mlr.encoder(inp.masked_seq.flatten(0, 1)).view(batch, seq_len, -1)
        preds = self.mlr.predict(latents, inp.seq_action)
        with torch.no_grad():
            targets = self.mlr.target_projection(self.mlr.target_encoder(inp.target_seq.flatten(0, 1)))
        return self.cfg.mlr.weight * normalized_mse(preds.flatten(0, 1), targets).mean()

    def actor_and_alpha_loss(self, inp: DMCInputs, noise: torch.Tensor | None = None):
        pi, log_pi, _ = self.actor(inp.obs, noise, detach=True)
        q1, q2 = self.critic(inp.obs, pi, detach=True)
        actor_loss = (self.alpha.detach() * log_pi - torch.min(q1, q2)).mean()
        alpha_loss = (self.alpha * (-log_pi - self.target_entropy).detach()).mean()
        return actor_loss, alpha_loss

    def loss_terms(self, inp: DMCInputs, critic_noise: torch.Tensor | None = None,
                   actor_noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All losses at the CURRENT weights (no step in between); noises f32[B, A] or None."""
        actor_loss, alpha_loss = self.actor_and_alpha_loss(inp, actor_noise)
        out = {"critic_loss": self.critic_loss(inp, critic_noise), "actor_loss": actor_loss,
               "alpha_loss": alpha_loss}
        if self.use_mlr:
            out["mlr_loss"] = self.mlr_loss(inp)
        return out

    # ---------------------------------------------------------------- update
    @staticmethod
    def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip_params=None, clip: float = 0.0):
        optimizer.zero_grad()
        loss.backward()
        norm = nn.utils.clip_grad_norm_(clip_params, clip) if clip_params is not None else None
        optimizer.step()
        return norm

    @torch.no_grad()
    def _soft_updates(self) -> None:
        cfg = self.cfg
        pairs = [(self.critic.q1, self.critic_target.q1, cfg.critic_tau),
                 (self.critic.q2, self.critic_target.q2, cfg.critic_tau),
                 (self.critic.encoder, self.critic_target.encoder, cfg.encoder_tau)]
        if self.use_mlr:
            pairs += [(self.mlr.encoder, self.mlr.target_encoder, cfg.momentum_tau),
                      (self.mlr.projection, self.mlr.target_projection, cfg.momentum_tau)]
        for online, target, tau in pairs:
            for p_o, p_t in zip(online.parameters(), target.parameters()):
                p_t.lerp_(p_o, tau)

    def update(self, batch: Any) -> dict[str, torch.Tensor]:
        """One agent step of updates on ``(SACBatch, SeqBatch)`` with fresh augmentation."""
        return self.update_inputs(self.prepare(batch))

    def update_inputs(self, inp: DMCInputs, critic_noise: torch.Tensor | None = None,
                      actor_noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Critic, MLR, then actor/alpha and EMAs when due, on prepared inputs.

        ``critic_noise``/``actor_noise`` f32[B, A]: the policy noise at ``next_obs`` / ``obs``
        (None draws it, as in training).
        """
        cfg = self.cfg
        out = {"critic_loss": self.critic_loss(inp, critic_noise)}
        self._step(self.critic_opt, out["critic_loss"])
        if self.use_mlr:
            out["mlr_loss"] = self.mlr_loss(inp)
            out["mlr_grad_norm"] = self._step(self.mlr_opt, out["mlr_loss"], self.mlr_params,
                                              cfg.aux_clip_norm)
            self.mlr_sched.step()
        if self.step % cfg.actor_update_freq == 0:
            out["actor_loss"], out["alpha_loss"] = self.actor_and_alpha_loss(inp, actor_noise)
            self._step(self.actor_opt, out["actor_loss"])
            self._step(self.alpha_opt, out["alpha_loss"])
        if self.step % cfg.target_update_freq == 0:
            self._soft_updates()
        self.step += 1
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def act(self, obs: Any) -> torch.Tensor:
        """Policy sample for obs u8[N, C, H, W] at the rendered size (centre crop): f32[N, A]."""
        x = to_tensor(obs, self.device).float()
        top = (x.shape[-1] - self.cfg.crop_size) // 2
        x = x[..., top:top + self.cfg.crop_size, top:top + self.cfg.crop_size]
        return self.actor(x)[0]

    def param_counts(self) -> dict[str, int]:
        return {"actor": count_parameters(self.actor), "critic": count_parameters(self.critic),
                "mlr": count_parameters(self.mlr.transformer) + count_parameters(self.mlr.projection)
                + count_parameters(self.mlr.predictor) + count_parameters(self.mlr.action_emb)}


    def load_jax_state(self, state: Any) -> None:
        """Copy a JAX ``DMCState`` (critic, critic target, actor, temperature, MLR, momentum)."""
        load_critic(self.critic, state.critic)
        load_critic(self.critic_target, state.critic_target)
        load_feature_head(self.actor.encoder, state.actor["head"], "actor/head")
        load_mlp(self.actor.trunk, state.actor["trunk"], "actor/trunk")
        copy_into(self.log_alpha, state.log_alpha, "log_alpha")
        if self.use_mlr:
            mlr, momentum = state.aux, state.aux_target
            load_dense(self.mlr.action_emb, mlr["action_embed"], "mlr/action_embed")
            load_blocks(self.mlr.transformer, mlr["decoder"])
            load_mlp(self.mlr.projection, mlr["projection"], "mlr/projection")
            load_mlp(self.mlr.predictor, mlr["predictor"], "mlr/predictor")
            load_encoder(self.mlr.target_encoder, momentum["encoder"], "momentum/encoder")
            load_mlp(self.mlr.target_projection, momentum["projection"], "momentum/projection")


def make_update(cfg: DMCConfig, action_dim: int, device: Any = "cpu") -> DMCUpdate:
    """The torch DMC update for ``cfg`` (the same dataclass the JAX agent reads)."""
    if action_dim < 1:
        raise ValueError(f"action_dim must be >= 1, got {action_dim}")
    return DMCUpdate(cfg, action_dim, device)


# ============================================================== Flax -> torch weights


def load_mlp(seq: nn.Sequential, params: Mapping[str, Any], name: str) -> None:
    """``nets.dmc.MLP`` (``fc0, fc1, ...``) -> the Linear layers of an :func:`mlp` Sequential."""
    linears = [layer for layer in seq if isinstance(layer, nn.Linear)]
    for i, linear in enumerate(linears):
        load_dense(linear, params[f"fc{i}"], f"{name}/fc{i}")


def load_feature_head(encoder: PixelEncoder, params: Mapping[str, Any], name: str) -> None:
    """``FeatureHead`` (``fc``, ``ln``) -> the encoder's Linear + LayerNorm."""
    load_dense(encoder.fc, params["fc"], f"{name}/fc")
    load_layer_norm(encoder.ln, params["ln"], f"{name}/ln")


def load_encoder(encoder: PixelEncoder, params: Mapping[str, Any], name: str) -> None:
    """``PixelEncoder`` params ``{"convs": {"conv{i}"}, "head": {"fc", "ln"}}`` (HWIO -> OIHW)."""
    for i, conv in enumerate(encoder.convs):
        load_conv(conv, params["convs"][f"conv{i}"], f"{name}/convs/conv{i}")
    load_feature_head(encoder, params["head"], f"{name}/head")


def load_critic(critic: Critic, params: Mapping[str, Any]) -> None:
    """``nets.dmc.Critic`` params (``encoder``, ``q1``, ``q2``) -> :class:`Critic`."""
    load_encoder(critic.encoder, params["encoder"], "critic/encoder")
    load_mlp(critic.q1, params["q1"], "critic/q1")
    load_mlp(critic.q2, params["q2"], "critic/q2")
