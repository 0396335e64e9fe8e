"""Typed configurations with the paper's values as defaults, presets and overrides.

Every number here is the paper's / the authors' code's setting (see
``shared/spec/mlr_reference.md``); deviations from the official behaviour are
named options whose default reproduces the code.

Three entry points are used by the rest of the library:

* :func:`make_config` -- domain + name (game / task) + preset + overrides ->
  validated :class:`AtariConfig` or :class:`DMCConfig`.
* :func:`apply_overrides` -- ``["mlr.block_size=4", "lr=3e-4"]`` style overrides,
  coerced to the field's type; unknown keys fail with close matches.
* :func:`to_dict` / :func:`from_dict` -- JSON round trip (run directories, resume).
"""

from __future__ import annotations

import dataclasses
import re
import json
import math
import typing
from typing import Any, Mapping, Sequence

from mlr_jax.names import close_matches


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and value."""


@dataclasses.dataclass(frozen=True)
class MLRConfig:
    """Mask-based latent reconstruction (shared by both domains).

    Attributes:
      seq_len: K, number of consecutive observations in one MLR sequence (jumps + 1).
      patch_size: side of a square mask patch in pixels (grid = image / patch).
      mask_ratio: fraction of grid cells masked per temporal block.
      block_size: number of consecutive frames sharing one spatial mask.
      mask_count_rule: how ``mask_ratio`` becomes a patch count. ``"keep_floor"``
        keeps ``floor(ratio * cells)`` patches and masks the rest (Atari code:
        25 of 49 masked); ``"mask_floor"`` masks ``floor(ratio * cells)`` (DMC code).
      mask_per_sample: False = one mask per update shared by the batch (official);
        True = an independent mask for every sequence.
      num_layers, num_heads, mlp_ratio: predictive latent decoder size.
      weight: multiplier of the MLR loss in the total loss.
    """

    seq_len: int = 16
    patch_size: int = 12
    mask_ratio: float = 0.5
    block_size: int = 8
    mask_count_rule: str = "keep_floor"
    mask_per_sample: bool = False
    num_layers: int = 2
    num_heads: int = 1
    mlp_ratio: float = 2.0
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class SPRConfig:
    """Self-predictive representations (Schwarzer et al., 2021), Atari only: ``aux="spr"``.

    The values are SPR's own (mila-iqia/spr ``scripts/run.py``, run "with augmentation"),
    which the MLR code base inherited as ``--jumps`` / ``--model-spr-weight`` (see the README's
    SPR table for every setting and the pieces that are fixed).

    Attributes:
      jumps: K, the number of steps the transition model rolls out (the loss covers steps
        1..K; the code's ``t0_spr_loss_weight`` is 0).
      weight: multiplier of the SPR loss (``model_spr_weight``).
    """

    jumps: int = 5
    weight: float = 5.0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Loop, logging and checkpoint settings common to both domains.

    The ``*_every`` intervals count the domain's usual steps: AGENT steps for Atari (as
    ``steps``), ENVIRONMENT steps for DMC (as ``env_steps``; the paper evaluates every 5,000).
    """

    seed: int = 1
    outdir: str = "runs"
    eval_episodes: int = 100
    eval_every: int = 0  # steps between evaluations; 0 = final evaluation only
    log_every: int = 1000  # steps between metric rows and progress lines
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end only
    # float32 matmuls and convolutions: "tf32" (TF32 on GPUs that have it, as the authors'
    # torch 1.7.1 by default; float32 on CPUs), "fp32" (full float32 everywhere) or "bf16"
    # (the layers in bfloat16); see mlr_jax.agents.common.PRECISIONS
    precision: str = "tf32"
    conv_impl: str = "auto"  # "xla", "im2col" or "auto" (im2col on CPU, xla on accelerators)
    # Where the replay's frames are read for a batch: "host" (numpy gather, pixels copied to
    # the device per update), "device" (a copy of the frames on every device; batches carry
    # indices) or "auto" (device on accelerators, host on CPU). Same batches either way.
    replay_frames: str = "auto"
    # Where batches are drawn: "device" (the replay's steps and frames copied to the devices,
    # batches sampled and priorities written inside the train step: no device-to-host copy
    # but the actions), "host" (the numpy replays sample; batches cross to the devices) or
    # "auto" (device on accelerators, host on CPU). replay_frames applies to "host" only.
    sampler: str = "auto"
    progress: bool = True
    preset: str = "paper"  # the preset make_config started from; reported with the results
    # Weights & Biases: a project name streams the metric rows, evaluations, the learning
    # curve and the evaluation GIF there too ("" = off; needs `pip install wandb`)
    wandb: str = ""
    wandb_mode: str = "online"  # "online" or "offline" (written below the run directory)


@dataclasses.dataclass(frozen=True)
class AtariConfig:
    """MLR on the SPR-style data-efficient Rainbow (Atari-100k)."""

    game: str = "pong"
    aux: str = "mlr"  # "mlr", "spr" (SPR's own objective) or "none" (the paper's Baseline)
    steps: int = 100_000  # agent steps (x4 frames)
    # environment (Atari-100k protocol)
    image_size: int = 84
    frame_stack: int = 4
    frame_skip: int = 4
    noop_max: int = 30
    # the agent step that ends a game (envpool counts agent steps and ends the game at this
    # one): the authors' env checks `step_counter >= horizon` (27,000) before counting the
    # step, so its games end at agent step 27,001 (108,004 frames)
    max_episode_steps: int = 27_001
    # the time limit ends the game as game over does: the authors' env returns done=True at
    # the horizon, and rlpyt's replay cuts the n-step return there (False: bootstrap through
    # the time limit, the textbook treatment of a truncation)
    time_limit_terminal: bool = True
    repeat_action_probability: float = 0.0
    fire_reset: bool = False
    # cv2.resize of the 210x160 screen to 84x84: "bilinear" (the authors' env, cv2's default;
    # envpool's use_inter_area_resize=False) or "area" (envpool's default, INTER_AREA)
    resize: str = "bilinear"
    # The frame stack at a game start and after a life loss (training only): "zero" (the
    # authors' env and rlpyt's frame buffer: the older frames are zeros) or "repeat"
    # (envpool's own stack: the first frame repeated at a game start, no break at a life loss)
    stack_reset: str = "zero"
    num_envs: int = 1  # training environments (SPR/MLR: 1)
    # network
    channels: tuple = (32, 64, 64)
    kernels: tuple = (8, 4, 3)
    strides: tuple = (4, 2, 1)
    hidden_size: int = 256
    num_atoms: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    noisy_std: float = 0.1
    head_grad_scale: float = 2 ** -0.5
    renormalize: bool = True
    # RL
    n_step: int = 10
    # which dones stop the n-step bootstrap: "first_step" (rlpyt at the authors' pinned commit
    # stores done_n[t] = done[t] only, so a done 1..n-1 steps later still bootstraps gamma^n
    # from the observation at the done) or "any_step" (the textbook cut: discount 0 when any
    # step of t..t+n-1 is done). Returns are cut at the first done either way.
    done_n_rule: str = "first_step"
    # which sequence starts the replay may draw: "rlpyt" (its sum tree as the authors ran it:
    # starts 3 .. count - (2 + n_step + seq_len), i.e. the newest 1 + n_step + seq_len slots
    # and the first 3 are off) or "written" (any start whose window is written)
    replay_start_rule: str = "rlpyt"
    gamma: float = 0.99
    batch_size: int = 32
    lr: float = 1e-4
    adam_eps: float = 1.5e-4
    clip_norm: float = 10.0
    updates_per_step: int = 2
    learning_starts: int = 2_000  # rlpyt's min_steps_learn: updates from agent step index 2,000
    # epsilon-greedy as rlpyt's EpsilonGreedyAgentMixin: eps_start up to and including agent
    # step index eps_ramp_start (rlpyt's min_itr_learn), linear to eps_end at eps_steps, then
    # eps_end (noisy nets explore). The code: 2,001 uniform random actions, then eps 0.
    eps_start: float = 1.0
    eps_end: float = 0.0
    eps_ramp_start: int = 2_000
    eps_steps: int = 2_001
    eval_epsilon: float = 0.001
    target_update_period: int = 1
    target_tau: float = 1.0
    # prioritized replay
    replay_capacity: int = 100_000
    priority_exponent: float = 0.5
    beta_start: float = 0.4
    beta_end: float = 1.0
    # agent steps over which beta anneals, whatever the run's length (the authors'
    # pri_beta_steps); 0 = over the run's `steps` (the same for a 100k run)
    beta_steps: int = 100_000
    # augmentation
    shift_pad: int = 4
    intensity_scale: float = 0.05
    # MLR
    momentum_tau: float = 1.0  # 1 = exact copy every update (SPR/MLR setting)
    scale_masked_input: bool = False  # code: masked online frames stay 0-255; True: /255
    mlr: MLRConfig = MLRConfig(patch_size=12, block_size=8, mask_count_rule="keep_floor")
    spr: SPRConfig = SPRConfig()
    run: RunConfig = RunConfig(eval_episodes=100, eval_every=0, checkpoint_every=10_000)


@dataclasses.dataclass(frozen=True)
class DMCConfig:
    """MLR on the CURL-style SAC from pixels (DMControl-100k/500k)."""

    task: str = "cartpole_swingup"
    aux: str = "mlr"
    env_steps: int = 100_000  # ENVIRONMENT steps = agent steps x action_repeat
    # environment
    action_repeat: int = 8
    image_size: int = 100  # rendered
    crop_size: int = 84  # network input
    frame_stack: int = 3
    camera_id: int = 0
    num_envs: int = 1
    # "envpool" (fast, its own port of the suite) or "dm_control" (the suite itself, through
    # a dmc2gym-equivalent wrapper, as the authors ran it; see README: DMC backends)
    env_backend: str = "envpool"
    # encoder / networks
    num_filters: int = 64
    num_conv_layers: int = 4
    feature_dim: int = 50
    hidden_dim: int = 1024
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    # SAC
    gamma: float = 0.99
    batch_size: int = 512
    critic_lr: float = 1e-3
    actor_lr: float = 1e-3
    critic_beta1: float = 0.9
    actor_beta1: float = 0.9
    alpha_lr: float = 1e-4
    alpha_beta1: float = 0.5
    init_temperature: float = 0.1
    actor_update_freq: int = 2
    target_update_freq: int = 2
    critic_tau: float = 0.01
    encoder_tau: float = 0.05
    # offsets of the SAC batch's random 100 -> 84 crops: "exclusive" (the code's
    # np.random.randint(0, 16): 0..15) or "inclusive" (0..16, every crop position)
    sac_crop_rule: str = "exclusive"
    # which MLR sequences the replay may draw: "authors" (their sample_spr: no window holding
    # an episode's last step, none reaching the newest step) or "episode" (any window inside
    # one episode)
    sequence_rule: str = "authors"
    seed_steps: int = 1_000  # agent steps of uniform random actions
    replay_capacity: int = 100_000
    # MLR
    aux_lr: float = 1e-3  # the official "auxiliary_task_lr"; MLR's Adam uses aux_lr_scale x this
    aux_lr_scale: float = 0.5
    aux_warmup_steps: int = 6_000  # inverse-square-root warm-up (updates)
    aux_batch_size: int = 128
    aux_clip_norm: float = 10.0
    momentum_tau: float = 0.05
    intensity_scale: float = 0.05
    reinit_encoder_linear: bool = True  # code: MLR's trunc-normal re-init also hits the encoder's Linear/LN
    mlr: MLRConfig = MLRConfig(patch_size=10, block_size=8, mask_count_rule="mask_floor")
    run: RunConfig = RunConfig(eval_episodes=10, eval_every=5_000, log_every=1_000,
                               checkpoint_every=50_000)

    @property
    def agent_steps(self) -> int:
        """Number of agent steps (policy decisions) in ``env_steps``."""
        return self.env_steps // self.action_repeat


# --------------------------------------------------------------------------- presets

ATARI_GAMES: tuple[str, ...] = (
    "alien", "amidar", "assault", "asterix", "bank_heist", "battle_zone", "boxing",
    "breakout", "chopper_command", "crazy_climber", "demon_attack", "freeway",
    "frostbite", "gopher", "hero", "jamesbond", "kangaroo", "krull", "kung_fu_master",
    "ms_pacman", "pong", "private_eye", "qbert", "road_runner", "seaquest", "up_n_down",
)

# Per-task values of the official configs/*.yaml (MLR's own block size and momentum).
DMC_TASK_PRESETS: dict[str, dict[str, Any]] = {
    "cartpole_swingup": {"action_repeat": 8, "mlr.block_size": 4},
    "reacher_easy": {"action_repeat": 4, "mlr.block_size": 4},
    "cheetah_run": {"action_repeat": 4, "critic_lr": 2e-4, "actor_lr": 2e-4, "aux_lr": 2e-4},
    "finger_spin": {"action_repeat": 2},
    "walker_walk": {"action_repeat": 2, "momentum_tau": 0.1},
    "ball_in_cup_catch": {"action_repeat": 4},
}
DMC_PAPER_TASKS: tuple[str, ...] = tuple(DMC_TASK_PRESETS)
DMC_BUDGETS: dict[str, int] = {"100k": 100_000, "500k": 500_000}

# Tiny configurations of the SAME code path: small decoder, short runs, small batches.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "atari": {
        "paper": {},
        "smoke": {
            "steps": 600, "learning_starts": 200, "eps_ramp_start": 200, "eps_steps": 201,
            "batch_size": 4,
            "channels": "16,32,16",
            "replay_capacity": 2_000, "max_episode_steps": 400,
            "mlr.seq_len": 4, "mlr.block_size": 2, "mlr.num_layers": 1,
            "run.eval_episodes": 2, "run.eval_every": 300, "run.log_every": 100,
            "run.checkpoint_every": 300,
        },
        # toy_catch (mlr_jax.envs.toy): learns in about a minute on 2 CPU cores
        "toy": {
            "steps": 2_000, "learning_starts": 300, "eps_ramp_start": 300, "eps_steps": 301,
            "lr": 1e-3, "updates_per_step": 1, "image_size": 20, "channels": "16,16",
            "kernels": "4,3", "strides": "2,2", "hidden_size": 64, "shift_pad": 2,
            "replay_capacity": 5_000, "beta_steps": 0, "mlr.seq_len": 4, "mlr.block_size": 2,
            "mlr.patch_size": 5, "mlr.num_layers": 1, "run.eval_episodes": 200,
            "run.eval_every": 500, "run.log_every": 250, "run.checkpoint_every": 0,
        },
        # A real game on a 2-core CPU in under an hour (experiments/cpu_learning.sh): 64x64
        # frames, a narrow encoder (latent 16x4x4 = 256, so a small decoder), MLR on K=4
        # sequences, one update per step. Not the paper's setting.
        "cpu": {
            "steps": 15_000, "image_size": 64, "channels": "16,32,16", "hidden_size": 128,
            "updates_per_step": 1, "mlr.seq_len": 4, "mlr.block_size": 2, "mlr.patch_size": 8,
            "mlr.num_layers": 1, "run.eval_episodes": 8, "run.eval_every": 5_000,
            "run.log_every": 1_000, "run.checkpoint_every": 5_000,
        },
    },
    "dmc": {
        "paper": {},
        "smoke": {
            "env_steps": 2_400, "seed_steps": 100, "batch_size": 8, "aux_batch_size": 4,
            "num_filters": 8, "num_conv_layers": 2, "hidden_dim": 32,
            "replay_capacity": 2_000, "mlr.seq_len": 4, "mlr.block_size": 2,
            "mlr.num_layers": 1, "aux_warmup_steps": 50,
            "run.eval_episodes": 2, "run.eval_every": 1_200, "run.log_every": 400,
            "run.checkpoint_every": 1_200,
        },
        # toy_reach (mlr_jax.envs.toy) learns in a few minutes on 2 CPU cores
        "toy": {
            "env_steps": 1_500, "action_repeat": 1, "seed_steps": 300, "image_size": 32,
            "crop_size": 28, "num_filters": 16, "num_conv_layers": 2, "hidden_dim": 128,
            "batch_size": 64, "aux_batch_size": 16, "replay_capacity": 10_000,
            "mlr.seq_len": 4, "mlr.block_size": 2, "mlr.patch_size": 8, "mlr.num_layers": 1,
            "aux_warmup_steps": 500,
            "run.eval_episodes": 10, "run.eval_every": 500, "run.log_every": 250,
            "run.checkpoint_every": 0,
        },
        # A real task at the DMControl-100k budget on a 2-core CPU (experiments/cpu_learning.sh,
        # 30-100 minutes a run): 64x64 renders cropped to 56, 16 filters x 2 layers, batch 64,
        # MLR on 16 sequences of K=8. Not the paper's setting.
        "cpu": {
            "env_steps": 100_000, "image_size": 64, "crop_size": 56, "num_filters": 16,
            "num_conv_layers": 2, "hidden_dim": 256, "batch_size": 64, "aux_batch_size": 16,
            "mlr.seq_len": 8, "mlr.block_size": 4, "mlr.patch_size": 8, "mlr.num_layers": 1,
            "run.eval_episodes": 10, "run.eval_every": 10_000, "run.log_every": 2_000,
            "run.checkpoint_every": 20_000,
        },
    },
}


# --------------------------------------------------------------------------- helpers

def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a string (from the command line) or JSON value to ``typ``."""
    if typ is tuple or typing.get_origin(typ) is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: expected a comma-separated list of ints, got {value!r}") from e
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    if typ in (int, float):
        try:
            number = float(value) if isinstance(value, str) else value
            if typ is int:
                if float(number) != int(float(number)):
                    raise ValueError
                return int(float(number))
            return float(number)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}") from e
    if typ is str:
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {typ!r}")


def _set(cfg: Any, path: list[str], raw: Any, full_key: str) -> Any:
    types = _field_types(type(cfg))
    head = path[0]
    if head not in types:
        raise ConfigError(
            f"unknown config key {full_key!r} for {type(cfg).__name__}"
            + close_matches(head, list(types)))
    current = getattr(cfg, head)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            if isinstance(raw, Mapping):
                for k, v in raw.items():
                    current = _set(current, [k], v, f"{full_key}.{k}")
                return dataclasses.replace(cfg, **{head: current})
            raise ConfigError(f"{full_key!r} is a section; set one of its fields, e.g. {full_key}.{next(iter(_field_types(type(current))))}=...")
        return dataclasses.replace(cfg, **{head: _set(current, path[1:], raw, full_key)})
    if len(path) > 1:
        raise ConfigError(f"{full_key!r}: {head!r} is not a section")
    return dataclasses.replace(cfg, **{head: _coerce(raw, types[head], full_key)})


def apply_overrides(cfg: Any, overrides: Mapping[str, Any] | Sequence[str]) -> Any:
    """Return ``cfg`` with dotted-key overrides applied.

    Args:
      cfg: a config dataclass.
      overrides: a mapping ``{"mlr.block_size": 4}`` or strings ``"mlr.block_size=4"``.
    """
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            key, value = item.split("=", 1)
            pairs[key.strip()] = value.strip()
        overrides = pairs
    for key, value in overrides.items():
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-friendly nested dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Inverse of :func:`to_dict`; unknown keys are an error."""
    return apply_overrides(cls(), dict(data))


# The auxiliary objectives of each domain (``aux``); "none" is the paper's Baseline. Each is
# implemented behind one interface: mlr_jax.agents.atari_aux / mlr_jax.agents.dmc_aux.
AUX_OBJECTIVES: dict[str, tuple[str, ...]] = {"atari": ("mlr", "spr", "none"), "dmc": ("mlr", "none")}

# Fields that take one of a few names: dotted key -> the names (checked by :func:`validate`).
CHOICES: dict[str, tuple[str, ...]] = {
    "aux": tuple(dict.fromkeys(name for names in AUX_OBJECTIVES.values() for name in names)),
    "mlr.mask_count_rule": ("keep_floor", "mask_floor"),
    "run.precision": ("fp32", "tf32", "bf16"),
    "run.conv_impl": ("auto", "xla", "im2col"),
    "run.replay_frames": ("auto", "host", "device"),
    "run.sampler": ("auto", "host", "device"),
    "run.preset": tuple(sorted(PRESETS["atari"])),
    "run.wandb_mode": ("online", "offline"),
    "resize": ("bilinear", "area"),
    "stack_reset": ("zero", "repeat"),
    "done_n_rule": ("first_step", "any_step"),
    "sac_crop_rule": ("exclusive", "inclusive"),
    "replay_start_rule": ("rlpyt", "written"),
    "sequence_rule": ("authors", "episode"),
    "env_backend": ("envpool", "dm_control"),
}


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values a number or flag field accepts: its type (``int``, ``float``, ``bool``,
    ``str`` or ``tuple`` of ints) and a range ``lo``..``hi``, each end open or closed. Float
    fields must be finite; ``bool`` is not an ``int``. For a tuple the range holds for every
    element (and it must not be empty). For a string ``lo`` is the shortest length (default
    1: not empty)."""

    typ: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    @property
    def _shortest(self) -> int:
        return 1 if self.lo is None else int(self.lo)

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "set"

    def _number_ok(self, value: Any, typ: type) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float) if typ is float else int):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or not (value > self.hi or (self.hi_open and value == self.hi))

    def error(self, key: str, value: Any) -> str | None:
        """Why ``value`` is not accepted for ``key``, or None."""
        if self.typ is bool:
            return None if isinstance(value, bool) else f"{key} must be true or false, got {value!r}"
        if self.typ is str:
            if isinstance(value, str) and len(value) >= self._shortest:
                return None
            return f"{key} must be a {'non-empty ' if self._shortest else ''}string, got {value!r}"
        if self.typ is tuple:
            if isinstance(value, tuple) and value and all(self._number_ok(v, int) for v in value):
                return None
            return f"{key} must be a non-empty list of integers {self.describe()}, got {value!r}"
        if self._number_ok(value, self.typ):
            return None
        kind = "an integer" if self.typ is int else "a finite number"
        return f"{key} must be {kind} {self.describe()}, got {value!r}"

    def bad_values(self) -> list[Any]:
        """Values this field must refuse (the validation test walks them for every field)."""
        if self.typ is bool:
            return [1, "yes"]
        if self.typ is str:
            return ["", 3] if self._shortest else [3, None]
        if self.typ is tuple:
            return [(), (0,) if self.lo is not None and self.lo > 0 else (1.5,)]
        bad: list[Any] = [True, "1"]
        if self.typ is float:
            bad += [float("nan"), float("inf")]
        else:
            bad += [1.5]
        if self.lo is not None:
            bad.append(self.lo if self.lo_open else self.lo - 1)
        if self.hi is not None:
            bad.append(self.hi if self.hi_open else self.hi + 1)
        return bad


def _ints(lo: int = 1) -> Bounds:
    return Bounds(int, lo)


def _reals(lo: float | None = 0.0, hi: float | None = None, lo_open: bool = True,
           hi_open: bool = False) -> Bounds:
    return Bounds(float, lo, hi, lo_open, hi_open)


_FLAG, _NAME = Bounds(bool), Bounds(str)
_UNIT = _reals(0.0, 1.0, lo_open=False)  # a probability / fraction in [0, 1]
_RATE = _reals(0.0, 1.0)  # an EMA / soft-update coefficient in (0, 1]
_BETA1 = _reals(0.0, 1.0, lo_open=False, hi_open=True)  # Adam's beta1 in [0, 1)

# Every number, flag and free-text field of every config, by dotted key (fields with one of a
# few names are in CHOICES). A field with the same name means the same in both domains.
# tests/test_config.py checks that every field has an entry and that each refuses a bad value.
BOUNDS: dict[str, Bounds] = {
    # MLRConfig
    "mlr.seq_len": _ints(), "mlr.patch_size": _ints(), "mlr.block_size": _ints(),
    "mlr.mask_ratio": _reals(0.0, 1.0, lo_open=False, hi_open=True),
    "mlr.mask_per_sample": _FLAG, "mlr.num_layers": _ints(), "mlr.num_heads": _ints(),
    "mlr.mlp_ratio": _reals(), "mlr.weight": _reals(lo_open=False),
    "spr.jumps": _ints(), "spr.weight": _reals(lo_open=False),
    # RunConfig
    "run.seed": _ints(0), "run.outdir": _NAME, "run.eval_episodes": _ints(),
    "run.eval_every": _ints(0), "run.log_every": _ints(), "run.checkpoint_every": _ints(0),
    "run.progress": _FLAG, "run.wandb": Bounds(str, lo=0),
    # both domains
    "game": _NAME, "task": _NAME, "image_size": _ints(), "frame_stack": _ints(),
    "num_envs": _ints(), "gamma": _reals(0.0, 1.0), "batch_size": _ints(),
    "replay_capacity": _ints(), "intensity_scale": _reals(lo_open=False),
    "momentum_tau": _RATE,
    # AtariConfig
    "steps": _ints(), "frame_skip": _ints(), "noop_max": _ints(0), "max_episode_steps": _ints(),
    "repeat_action_probability": _UNIT, "fire_reset": _FLAG, "time_limit_terminal": _FLAG, "channels": Bounds(tuple, 1),
    "kernels": Bounds(tuple, 1), "strides": Bounds(tuple, 1), "hidden_size": _ints(),
    "num_atoms": _ints(2), "v_min": _reals(None), "v_max": _reals(None),
    "noisy_std": _reals(lo_open=False), "head_grad_scale": _reals(), "renormalize": _FLAG,
    "n_step": _ints(), "lr": _reals(), "adam_eps": _reals(), "clip_norm": _reals(),
    "updates_per_step": _ints(), "learning_starts": _ints(0), "eps_start": _UNIT,
    "eps_end": _UNIT, "eps_ramp_start": _ints(0), "eps_steps": _ints(), "eval_epsilon": _UNIT,
    "target_update_period": _ints(), "target_tau": _RATE, "priority_exponent": _reals(lo_open=False),
    "beta_start": _UNIT, "beta_end": _UNIT, "beta_steps": _ints(0), "shift_pad": _ints(0), "scale_masked_input": _FLAG,
    # DMCConfig
    "env_steps": _ints(), "action_repeat": _ints(), "crop_size": _ints(), "camera_id": _ints(0),
    "num_filters": _ints(), "num_conv_layers": _ints(), "feature_dim": _ints(),
    "hidden_dim": _ints(), "log_std_min": _reals(None), "log_std_max": _reals(None),
    "critic_lr": _reals(), "actor_lr": _reals(), "critic_beta1": _BETA1, "actor_beta1": _BETA1,
    "alpha_lr": _reals(), "alpha_beta1": _BETA1, "init_temperature": _reals(),
    "actor_update_freq": _ints(), "target_update_freq": _ints(), "critic_tau": _RATE,
    "encoder_tau": _RATE, "seed_steps": _ints(0), "aux_lr": _reals(), "aux_lr_scale": _reals(),
    "aux_warmup_steps": _ints(), "aux_batch_size": _ints(), "aux_clip_norm": _reals(),
    "reinit_encoder_linear": _FLAG,
}


def field_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every leaf field of a config (``["game", ..., "mlr.seq_len", ...]``)."""
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += field_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _get(cfg: Any, key: str) -> Any:
    """The value of dotted ``key`` in ``cfg``, or None when that config has no such field."""
    for part in key.split("."):
        if not hasattr(cfg, part):
            return None
        cfg = getattr(cfg, part)
    return cfg


def check_local_path(path: str, what: str) -> None:
    """Refuse a URL (``gs://bucket/runs``, ``s3://...``) where a directory is written: run
    directories, checkpoints, metrics and reports go through the local filesystem."""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", str(path))
    if scheme:
        raise ConfigError(
            f"{what}={str(path)!r} is a {scheme.group(1)}:// URL, but mlr-jax writes run "
            "directories through the local filesystem: mount the bucket (for example "
            "`gcsfuse --implicit-dirs BUCKET /mnt/BUCKET` on every host) and give the mounted "
            "path, e.g. /mnt/BUCKET/runs")


def validate(cfg: Any) -> Any:
    """Raise :class:`ConfigError` naming the first inconsistent value; return cfg."""
    m = cfg.mlr
    choices = {**CHOICES, "aux": AUX_OBJECTIVES[domain_of(cfg)]}  # the domain's own objectives
    for key in field_keys(cfg):  # each field on its own: type and range, or one of its names
        value = _get(cfg, key)
        if key in choices:
            if value not in choices[key]:
                raise ConfigError(f"{key} must be one of {', '.join(choices[key])}; got {value!r}"
                                  + close_matches(str(value), choices[key]))
        elif (problem := BOUNDS[key].error(key, value)) is not None:
            raise ConfigError(problem)
    check_local_path(cfg.run.outdir, "run.outdir")
    # relations between fields
    if m.seq_len % m.block_size:
        raise ConfigError(
            f"mlr.seq_len={m.seq_len} must be a positive multiple of mlr.block_size={m.block_size}")
    if cfg.image_size % m.patch_size:
        raise ConfigError(
            f"image_size={cfg.image_size} is not divisible by mlr.patch_size={m.patch_size}")
    if isinstance(cfg, AtariConfig):
        if not len(cfg.channels) == len(cfg.kernels) == len(cfg.strides):
            raise ConfigError(f"channels={cfg.channels}, kernels={cfg.kernels} and strides="
                              f"{cfg.strides} must have one entry per convolution each")
        from mlr_jax.nets.atari import nature_cnn_output_dim  # the encoder's own arithmetic
        try:
            width = nature_cnn_output_dim(cfg.image_size, cfg.channels, cfg.kernels, cfg.strides)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if cfg.v_min >= cfg.v_max:
            raise ConfigError(f"v_min={cfg.v_min} must be less than v_max={cfg.v_max}")
        if not 0 <= cfg.eps_ramp_start < cfg.eps_steps:
            raise ConfigError(f"eps_ramp_start={cfg.eps_ramp_start} must be in [0, eps_steps="
                              f"{cfg.eps_steps})")
        if cfg.replay_capacity < m.seq_len + cfg.n_step + max(cfg.frame_stack, 2) + 1:
            raise ConfigError(
                f"replay_capacity={cfg.replay_capacity} cannot hold one sequence of "
                f"{m.seq_len}+{cfg.n_step} steps")
    else:
        width = cfg.feature_dim
        if cfg.env_steps < cfg.action_repeat:
            raise ConfigError(f"env_steps={cfg.env_steps} is less than action_repeat={cfg.action_repeat}")
        if cfg.crop_size > cfg.image_size:
            raise ConfigError(f"crop_size={cfg.crop_size} exceeds image_size={cfg.image_size}")
        if cfg.log_std_min >= cfg.log_std_max:
            raise ConfigError(f"log_std_min={cfg.log_std_min} must be less than "
                              f"log_std_max={cfg.log_std_max}")
    if width % m.num_heads:
        raise ConfigError(f"mlr.num_heads={m.num_heads} does not divide the decoder's width "
                          f"{width} (the encoder's output)")
    return cfg


def make_config(domain: str, name: str | None = None, preset: str = "paper",
                overrides: Mapping[str, Any] | Sequence[str] = ()) -> AtariConfig | DMCConfig:
    """Build a validated config.

    Args:
      domain: ``"atari"`` or ``"dmc"``.
      name: Atari game (``"pong"``) or DMC task (``"cartpole_swingup"``); None keeps the default.
      preset: a key of :data:`PRESETS`: ``"paper"`` (defaults), ``"smoke"`` (tiny, same code
        path), ``"toy"`` (the toy tasks of the learning tests) or ``"cpu"`` (reduced real runs).
      overrides: dotted-key overrides applied last.

    The game or task name is checked against the environments by
    :func:`mlr_jax.envs.check_name` (the CLI and :func:`mlr_jax.loop.train` call it), so that
    the config imports no environment library.
    """
    if domain not in PRESETS:
        raise ConfigError(f"unknown domain {domain!r}; expected one of {sorted(PRESETS)}")
    if preset not in PRESETS[domain]:
        raise ConfigError(f"unknown preset {preset!r} for {domain}; expected one of {sorted(PRESETS[domain])}"
                          + close_matches(preset, list(PRESETS[domain])))
    if domain == "atari":
        cfg: Any = AtariConfig()
        if name is not None:
            cfg = dataclasses.replace(cfg, game=name)
    else:
        cfg = DMCConfig()
        if name is not None:
            cfg = dataclasses.replace(cfg, task=name)
        cfg = apply_overrides(cfg, DMC_TASK_PRESETS.get(cfg.task, {}))
    cfg = apply_overrides(cfg, {**PRESETS[domain][preset], "run.preset": preset})
    return validate(apply_overrides(cfg, overrides))


def domain_of(cfg: AtariConfig | DMCConfig) -> str:
    """``"atari"`` or ``"dmc"``."""
    return "atari" if isinstance(cfg, AtariConfig) else "dmc"


def name_of(cfg: AtariConfig | DMCConfig) -> str:
    """The game or task of ``cfg``."""
    return cfg.game if isinstance(cfg, AtariConfig) else cfg.task
