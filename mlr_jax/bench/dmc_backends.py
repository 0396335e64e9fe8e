"""Is envpool's DMC the task the paper's numbers came from? A cross-check against dm_control.

For each task, both backends (:class:`~mlr_jax.envs.dmc.DMCVecEnv` on envpool and
:class:`~mlr_jax.envs.dmc_suite.SuiteVecEnv` on dm_control, the authors' dmc2gym protocol)
play one full episode with the same seed and the same uniform random actions, and the
per-agent-step rewards, the rendered frames (mean absolute difference and PSNR) and the
returns are compared:

* ``same_seed``: as they start. The two backends draw initial states from different random
  generators, so the episodes differ from the first frame.
* ``same_state`` (tasks whose observation is the physics state, :data:`ALIGNABLE`): the
  dm_control episode is first set to envpool's initial state, so what remains is the
  difference of the two MuJoCo builds and renderers.
* ``random_returns``: the return of the random policy over ``episodes`` episodes of each
  backend (no rendering), a check of the task as a whole.

``python -m mlr_jax.bench.dmc_backends [OUTDIR] [--tasks ...] [--episodes N]`` writes
``OUTDIR/dmc_backends_<date>.json`` with both backends' and MuJoCo versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from mlr_jax import host
from mlr_jax.config import DMC_PAPER_TASKS, make_config
from mlr_jax.envs import DMCVecEnv, SuiteVecEnv

# task -> how envpool's initial observation becomes dm_control's physics state
ALIGNABLE = {
    # position = (cart x, cos, sin of the pole angle), velocity = qvel
    "cartpole_swingup": lambda obs: (np.array([obs["position"][0], math.atan2(obs["position"][2],
                                                                              obs["position"][1])]),
                                     np.asarray(obs["velocity"])),
    # position = qpos, velocity = qvel
    "ball_in_cup_catch": lambda obs: (np.asarray(obs["position"]), np.asarray(obs["velocity"])),
}


def envpool_mujoco_version() -> str:
    """The MuJoCo built into envpool's DMC module (``mj_versionString`` of its library;
    envpool does not report it otherwise)."""
    import ctypes
    import os

    import envpool
    import envpool.mujoco.dmc  # noqa: F401 - loads the library

    lib = ctypes.CDLL(os.path.join(os.path.dirname(envpool.__file__), "mujoco",
                                   "mujoco_dmc_envpool.so"))
    lib.mj_versionString.restype = ctypes.c_char_p
    return lib.mj_versionString().decode()


def _psnr(mae_sq: float) -> float:
    return float("inf") if mae_sq == 0 else float(10 * np.log10(255.0 ** 2 / mae_sq))


def _episode(a: DMCVecEnv, b: SuiteVecEnv, actions: np.ndarray) -> dict[str, Any]:
    """Step both (already reset) backends with ``actions[T, A]`` until an episode ends."""
    rewards, mae, mse = [[], []], [], []

    def frames():
        fa, fb = a._stack.stacks[0, -3:].astype(np.float64), b._stack.stacks[0, -3:].astype(np.float64)
        mae.append(float(np.abs(fa - fb).mean()))
        mse.append(float(((fa - fb) ** 2).mean()))

    frames()
    for act in actions:
        ra, rb = a.step(act[None]), b.step(act[None])
        rewards[0].append(float(ra.reward[0]))
        rewards[1].append(float(rb.reward[0]))
        if ra.episode_end[0] or rb.episode_end[0]:
            break
        frames()
    ra_, rb_ = np.array(rewards[0]), np.array(rewards[1])
    return {"agent_steps": len(ra_), "return_envpool": float(ra_.sum()),
            "return_dm_control": float(rb_.sum()),
            "reward_max_abs_diff": float(np.abs(ra_ - rb_).max()),
            "reward_mean_abs_diff": float(np.abs(ra_ - rb_).mean()),
            "first_reward_diff_step": int(np.argmax(np.abs(ra_ - rb_) > 1e-4))
            if np.any(np.abs(ra_ - rb_) > 1e-4) else None,
            "frame_mae_first": mae[0], "frame_mae_mean": float(np.mean(mae)),
            "frame_mae_max": float(np.max(mae)), "psnr_first_db": _psnr(mse[0]),
            "psnr_mean_db": _psnr(float(np.mean(mse))),
            "rewards_envpool": ra_.tolist(), "rewards_dm_control": rb_.tolist()}


def _align(task: str, a: DMCVecEnv, b: SuiteVecEnv) -> None:
    """Restart envpool's episode, set dm_control's physics to its initial state, and
    render both again (the stacks start from these frames)."""
    obs, _ = a._pool.reset()
    qpos, qvel = ALIGNABLE[task]({k: np.asarray(v)[0] for k, v in obs.items()})
    physics = b._envs[0].physics
    with physics.reset_context():
        physics.data.qpos[:] = qpos
        physics.data.qvel[:] = qvel
    fresh = np.ones(1, bool)
    a._push(fresh)
    b._push(fresh)


def compare_task(task: str, seed: int = 1, image_size: int = 100, align: bool = False) -> dict:
    """One episode of both backends on ``task`` (its paper action repeat), same seed and
    actions; with ``align`` from the same initial state."""
    cfg = make_config("dmc", task, "paper", [f"image_size={image_size}"])
    a, b = DMCVecEnv(cfg, 1, seed), SuiteVecEnv(cfg, 1, seed)
    try:
        a.reset(), b.reset()
        if align:
            _align(task, a, b)
        rng = np.random.default_rng(seed)
        actions = rng.uniform(-1.0, 1.0, (a.episode_length, a.action_dim))
        return {"action_repeat": cfg.action_repeat, **_episode(a, b, actions)}
    finally:
        a.close(), b.close()


def random_returns(task: str, episodes: int, seed: int = 1) -> dict[str, Any]:
    """Random-policy returns of each backend over ``episodes`` episodes (state only)."""
    import envpool
    from dm_control import suite

    from mlr_jax.envs import dmc_task_id, suite_tasks

    cfg = make_config("dmc", task, "paper")
    rng = np.random.default_rng(seed)
    pool = envpool.make_gymnasium(dmc_task_id(task), num_envs=1, seed=seed)
    domain, name = suite_tasks()[task].split("/")
    env = suite.load(domain, name, task_kwargs={"random": seed})
    out = {"envpool": [], "dm_control": []}
    for _ in range(episodes):
        pool.reset()
        env.reset()
        total_a = total_b = 0.0
        done_a = done_b = False
        while not (done_a and done_b):
            act = rng.uniform(-1.0, 1.0, env.action_spec().shape)
            for _ in range(cfg.action_repeat):
                if not done_a:
                    _, r, term, trunc, _ = pool.step(act[None].astype(np.float64))
                    total_a += float(r[0])
                    done_a = bool(term[0] or trunc[0])
                if not done_b:
                    ts = env.step(act)
                    total_b += ts.reward or 0.0
                    done_b = ts.last()
        out["envpool"].append(total_a)
        out["dm_control"].append(total_b)
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
            for k, v in out.items()}


def run(tasks: Sequence[str] = DMC_PAPER_TASKS, episodes: int = 10, seed: int = 1) -> dict:
    """The record :func:`main` writes."""
    from mlr_jax.envs import dmc_suite

    record: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": host.describe(), "versions": {**host.versions(), **dmc_suite.versions(),
                                              "envpool_mujoco": envpool_mujoco_version()},
        "seed": seed, "image_size": 100, "camera_id": 0, "tasks": {}}
    for task in tasks:
        entry = {"same_seed": compare_task(task, seed)}
        if task in ALIGNABLE:
            entry["same_state"] = compare_task(task, seed, align=True)
        entry["random_returns"] = random_returns(task, episodes, seed)
        record["tasks"][task] = entry
        print(f"[dmc_backends] {task}: " + json.dumps(
            {k: {m: v[m] for m in ("return_envpool", "return_dm_control", "frame_mae_first",
                                   "psnr_first_db")} for k, v in entry.items() if k != "random_returns"}),
              flush=True)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", nargs="?", default="runs/bench")
    parser.add_argument("--tasks", default=",".join(DMC_PAPER_TASKS))
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args(argv)
    record = run([t for t in args.tasks.split(",") if t], args.episodes)
    out = pathlib.Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"dmc_backends_{datetime.date.today():%Y%m%d}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[dmc_backends] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
