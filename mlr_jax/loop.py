"""The training loop shared by both domains: act, store, update, evaluate, log, checkpoint.

``train(cfg)`` reads top to bottom: build the environment, the domain adapter
(:mod:`mlr_jax.domains`: agent, replay, exploration, batch sampling), the data-parallel train
step (:mod:`mlr_jax.parallel`) and the run directory (:mod:`mlr_jax.logging`); then, for every
agent step, act, store the transition, run ``updates_per_step`` updates once learning has
started, and periodically log, evaluate and checkpoint. It ends with the final evaluation,
``final_eval.json``, ``learning_curve.png`` and ``summary.md``.

In a multi-process run (:func:`mlr_jax.parallel.initialize_distributed`) every process runs
this same loop on the same environment and replay, takes the primary's actions, and checks at
every log row that the processes still agree; only the primary writes the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import signal
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from mlr_jax import checkpoint, envs, evaluation, host, parallel
from mlr_jax import logging as runlog
from mlr_jax.agents.common import FINITE
from mlr_jax.config import AtariConfig, DMCConfig, domain_of, from_dict, name_of, to_dict
from mlr_jax.domains import Domain, check_memory, make_domain
from mlr_jax import device_frames


VIDEO_FRAMES = 500  # frames of the final evaluation's first episode kept in eval.gif
EVAL_SEED_OFFSET = 10_000  # evaluation environments are seeded run.seed + this
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # checkpoint and stop instead of dying


class TrainingInterrupted(Exception):
    """Training stopped early on a signal, after saving a checkpoint of the step it stopped at.

    Attributes: ``step``, ``run_dir``, ``signal_name``, and ``exit_code`` (128 + the signal's
    number, the shell's convention).
    """

    def __init__(self, step: int, run_dir: pathlib.Path, signal_name: str, final: bool = False):
        self.step, self.run_dir, self.signal_name = step, run_dir, signal_name
        self.exit_code = 128 + int(signal.Signals[signal_name])
        todo = "run the final evaluation" if final else "continue"
        super().__init__(f"stopped by {signal_name} at agent step {step}; checkpoint saved in "
                         f"{run_dir / 'checkpoints' / str(step)}; {todo} with --resume {run_dir}")


class NonFiniteUpdate(RuntimeError):
    """An update produced a non-finite loss or gradient norm; training stopped before any
    state after it was saved. The message names the update, the agent step, the bad values
    and the last checkpoint (all of whose updates were finite)."""

    def __init__(self, update: int, step: int, metrics: dict[str, Any], run_dir: pathlib.Path):
        values = {k: float(np.asarray(v)) for k, v in metrics.items()
                  if k != FINITE and np.ndim(v) == 0}
        bad = {k: v for k, v in values.items() if not np.isfinite(v)} or values
        last = checkpoint.latest_step(run_dir / "checkpoints")
        kept = (f"the last checkpoint, {run_dir / 'checkpoints' / str(last)}, holds only finite "
                f"updates (--resume {run_dir} continues from it)" if last is not None
                else "no checkpoint had been written yet")
        self.update, self.step, self.bad = update, step, bad
        super().__init__(
            f"update {update} (at agent step {step}) produced non-finite values: "
            + ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
            + f"; training stopped and nothing after the last good update was saved; {kept}")


def check_finite(update: int, step: int, metrics: dict[str, Any], run_dir: pathlib.Path) -> None:
    """Raise :class:`NonFiniteUpdate` unless ``metrics[FINITE]`` of update number ``update``
    (made at agent ``step``) holds. Checked right after every update: the next action reads
    the updated parameters anyway, so this costs no extra wait for the device."""
    if not bool(np.asarray(metrics[FINITE])):
        raise NonFiniteUpdate(update, step, metrics, run_dir)


@dataclasses.dataclass
class RunResult:
    """What a finished :func:`train` returns."""

    run_dir: pathlib.Path
    steps: int
    final_eval: dict[str, Any]


class EvaluationStopped(Exception):
    """:func:`evaluate` gave up because its ``stop`` callback said so (a stop signal)."""


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns: ``scores[episodes]``; ``video``, the newest frame of the
    first environment at each of its first ``record`` steps (uint8[T, C, H, W]; empty if 0);
    ``protocol``, what an evaluation episode was (the environment's own settings, the
    policy's, the number of episodes)."""

    scores: np.ndarray
    video: np.ndarray
    protocol: dict[str, Any]


def evaluate(domain: Domain, cfg: AtariConfig | DMCConfig, state: Any, episodes: int,
             seed: int, key: jax.Array, record: int = 0,
             stop: Callable[[], bool] = lambda: False) -> Evaluation:
    """Scores of ``episodes`` full evaluation episodes, run as one batch of environments.

    ``state`` is the replicated training state (:func:`mlr_jax.parallel.replicate`).
    Every environment plays exactly one episode (the first one to end is kept); actions come
    from the agent's evaluation policy (Atari: epsilon 0.001, no noise; DMC: the mean action).
    ``stop`` is asked before every step; when it answers True the evaluation is abandoned
    with :class:`EvaluationStopped` (an Atari evaluation can take many minutes).
    """
    env = envs.make_env(cfg, episodes, seed, evaluation=True)
    protocol = {"episodes": episodes, **env.protocol, **domain.eval_policy}
    act = domain.eval_act
    channels = env.obs_shape[0] // cfg.frame_stack
    scores = np.full(episodes, np.nan, np.float32)
    try:
        obs = env.reset()
        video = [obs[0, -channels:]] if record else []
        while np.isnan(scores).any():
            if stop():
                raise EvaluationStopped
            key, sub = jax.random.split(key)
            rec = env.step(np.asarray(act(state, obs, sub)))
            first = rec.episode_end & np.isnan(scores)
            scores[first] = rec.score[first]
            obs = rec.obs
            if np.isnan(scores[0]) and len(video) < record:
                video.append(obs[0, -channels:])
    finally:
        env.close()
    return Evaluation(scores, np.asarray(video, np.uint8), protocol)


def _quiet(*_: Any) -> None:
    """The ``log`` of the processes other than the primary."""


def _due(step: int, unit: int, every: int) -> bool:
    """Whether agent step ``step`` reached a multiple of ``every`` counted in ``unit`` steps
    per agent step (DMC intervals are environment steps); ``every == 0`` never."""
    return every > 0 and (step * unit) // every > ((step - 1) * unit) // every


def _window_means(window: list[dict[str, Any]]) -> dict[str, float]:
    """``train/<name>`` means of the scalar metrics of the updates since the last log row;
    NaN entries (e.g. the DMC actor loss on updates without an actor step) are skipped."""
    if not window:
        return {}
    stacked = jax.device_get({k: [m[k] for m in window] for k in window[0] if k != FINITE})
    means = {}
    for k, v in stacked.items():
        v = np.asarray(v, np.float64)
        if not np.isnan(v).all():
            means[f"train/{k}"] = float(np.nanmean(v))
    return means


def _restore(run: runlog.RunDir, cfg, state, replay, log=print):
    """Load the newest readable checkpoint of ``run`` into ``state`` and ``replay``."""
    state, replay_state, loop_state, _ = checkpoint.restore(run.checkpoints, state, to_dict(cfg),
                                                            on_skip=log)
    replay.load_state_dict(replay_state)
    replay.mark_episode_end()  # the environment restarts: no stack/sequence across the gap
    return state, loop_state


def evaluate_checkpoint(run_dir: str | pathlib.Path, step: int | None = None,
                        episodes: int | None = None, seed: int | None = None, gif: bool = False,
                        log=print) -> dict[str, Any]:
    """Evaluate a saved agent again: the checkpoint of ``step`` (None: the latest) of a run
    directory, in fresh evaluation environments, without reading the replay.

    With the defaults, the final checkpoint of a finished run gives exactly the scores of its
    ``final_eval.json``: the same environment seed (``run.seed`` +
    :data:`EVAL_SEED_OFFSET`), episode count and evaluation key (the next split of the
    checkpoint's loop key, as the loop does right after saving).

    Writes ``<run_dir>/evals/step_<step>.json`` (the summary of :func:`train`'s
    ``final_eval.json`` plus ``checkpoint_step``, ``eval_seed``) and, with ``gif``,
    ``step_<step>.gif``; returns the summary.
    """
    cfg = load_run_config(run_dir)
    run = runlog.RunDir.open(run_dir)
    env = envs.make_env(cfg, cfg.num_envs, cfg.run.seed, evaluation=False)
    domain = make_domain(cfg, env)  # the training environment only tells the action space
    env.close()
    target = domain.agent.init(jax.random.PRNGKey(0))
    state, _, loop_state, _ = checkpoint.restore(run.checkpoints, target, to_dict(cfg), step,
                                                 with_replay=False, on_skip=log)
    step = int(loop_state["step"])
    eval_seed = cfg.run.seed + EVAL_SEED_OFFSET if seed is None else seed
    episodes = cfg.run.eval_episodes if episodes is None else episodes
    _, eval_key = jax.random.split(jax.numpy.asarray(loop_state["key"]))
    log(f"[mlr-jax] evaluating {run.root} at step {step}: {episodes} episodes, seed {eval_seed}")
    scores, video, protocol = evaluate(domain, cfg, parallel.replicate(state), episodes,
                                       eval_seed, eval_key, VIDEO_FRAMES if gif else 0)
    summary = evaluation.summarize_scores(domain.kind, domain.name, scores.tolist(),
                                          budget=domain.budget)
    summary["protocol"] = protocol
    summary.update(agent_steps=step, env_steps=step * domain.env_steps_per_step,
                   checkpoint_step=step, eval_seed=eval_seed)
    out = run.root / "evals" / f"step_{step}.json"
    log(f"[mlr-jax] {summary['mean']:.2f} ± {summary['std']:.2f} over {len(scores)} episodes; "
        "scores: " + ", ".join(f"{x:g}" for x in summary["scores"]))
    try:  # the scores are printed first: a run directory one cannot write to loses nothing
        out.parent.mkdir(exist_ok=True)
        runlog.write_json(out, summary)
        if gif:
            runlog.write_gif(out.with_suffix(".gif"), video)
    except OSError as e:
        raise runlog.NotWritten(f"the scores above could not be written to {out.parent} "
                                f"({e.strerror or e})") from None
    log(f"[mlr-jax] written to {out}")
    return summary


def load_run_config(run_dir: str | pathlib.Path) -> AtariConfig | DMCConfig:
    """The config a run directory was started with (for ``--resume``)."""
    try:
        run = runlog.RunDir.open(run_dir)
    except FileNotFoundError as e:
        if parallel.process_count() == 1:
            raise
        raise FileNotFoundError(
            f"process {parallel.process_index()}: {e}. A multi-process --resume reads the run "
            f"directory in every process: keep run.outdir on a filesystem all hosts share") from e
    data = json.loads(run.config.read_text())
    cls = AtariConfig if "game" in data else DMCConfig
    return from_dict(cls, data)


def train(cfg: AtariConfig | DMCConfig, resume: str | pathlib.Path | None = None,
          log=print) -> RunResult:
    """Train the agent of ``cfg`` and evaluate it.

    Args:
      cfg: a validated config (:func:`mlr_jax.config.make_config`).
      resume: an existing run directory: continue from its latest checkpoint (same config,
        except fields such as ``steps`` that do not change shapes). A run stopped after its
        last step (during the final checkpoint or evaluation) only runs the final evaluation.
      log: where to print start-up and end-of-run lines.

    Before anything slow is built, it refuses (``ConfigError`` / ``CheckpointError``) a
    batch that does not divide over the devices, a run that cannot fit in memory
    (:func:`mlr_jax.domains.check_memory`), an unwritable ``run.outdir`` and, with
    ``resume``, a checkpoint of another format or config.
    """
    kind, name, seed = domain_of(cfg), name_of(cfg), cfg.run.seed
    primary = parallel.is_primary()  # the process that writes files and prints
    log = log if primary else _quiet
    envs.check_name(cfg)
    for field in ("batch_size", "aux_batch_size"):  # fail before anything is built
        if hasattr(cfg, field):
            parallel.check_divisible(getattr(cfg, field), parallel.device_count(), field)
    check_memory(cfg)
    runlog.check_wandb(cfg.run.wandb)
    if resume is not None:
        run = runlog.RunDir.open(resume)
        checkpoint.check_resumable(run.checkpoints, to_dict(cfg))
    elif primary:
        runlog.RunDir.check_outdir(cfg.run.outdir)
    env = envs.make_env(cfg, cfg.num_envs, seed, evaluation=False)
    domain = make_domain(cfg, env)
    replay = domain.make_replay()
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    state = domain.agent.init(init_key)
    rng = np.random.default_rng(seed)
    step, episodes, latest_score, wall_before = 0, 0, float("nan"), 0.0

    if resume is not None:
        state, loop_state = _restore(run, cfg, state, replay, log)
        step, episodes = int(loop_state["step"]), int(loop_state["episodes"])
        latest_score = float(loop_state["latest_score"])
        wall_before = float(loop_state.get("wall_time", 0.0))  # absent before it was saved
        key = jax.numpy.asarray(loop_state["key"])
        rng.bit_generator.state = loop_state["rng"]
        log(f"[mlr-jax] resuming {run.root} from step {step}")
    else:
        root = str(runlog.RunDir.create(cfg.run.outdir, kind, name, cfg.aux, seed).root) if primary else ""
        run = runlog.RunDir(pathlib.Path(parallel.share_text(root)))  # the primary's, everywhere
    counts = domain.agent.param_counts(state)
    if primary:
        runlog.write_json(run.config, to_dict(cfg))
        runlog.write_json(run.param_counts, counts)
    if parallel.process_count() > 1:
        log(f"[mlr-jax] {parallel.process_count()} processes, {parallel.device_count()} devices")
    log(f"[mlr-jax] {kind} {name} aux={cfg.aux} seed={seed} -> {run.root}")
    log("[mlr-jax] parameters: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))

    train_step = device_frames.parallel_train_step(domain.agent.train_step, replay.device_frames)
    updates = int(state.step)  # updates done (both agents' states count them)
    pstate = parallel.replicate(state)
    tracker = (runlog.WandbTracker(run, cfg.run.wandb, cfg.run.wandb_mode, to_dict(cfg))
               if primary and cfg.run.wandb else None)
    metrics_writer = (runlog.MetricsWriter(run, keep_until=step if resume is not None else None,
                                           tracker=tracker)
                      if primary else runlog.NoMetrics())
    unit = domain.unit  # progress counts the steps the user gave: DMC environment steps
    progress = runlog.Progress(domain.total_steps * unit, initial=step * unit,
                               enabled=cfg.run.progress, print_every=cfg.run.log_every,
                               desc=f"{kind}:{name}", unit="env step" if kind == "dmc" else "step",
                               show=primary)

    def wall_time():
        return wall_before + time.monotonic() - start_time

    def save_checkpoint():
        if not primary:
            return
        loop_state = {"step": step, "episodes": episodes, "latest_score": latest_score,
                      "key": np.asarray(key), "rng": rng.bit_generator.state,
                      "wall_time": wall_time()}
        checkpoint.save(run.checkpoints, step, parallel.unreplicate(pstate), replay.state_dict(),
                        loop_state, to_dict(cfg))

    def run_eval(eval_key, record=0):
        return evaluate(domain, cfg, pstate, cfg.run.eval_episodes, seed + EVAL_SEED_OFFSET,
                        eval_key, record, stop=lambda: stop.requested is not None)

    parallel.barrier(f"mlr_jax_loop_start_{step}")  # hosts restore and compile at their own pace
    obs = env.reset()
    start_time, start_step, window = time.monotonic(), step, []
    # Ctrl-C / SIGTERM, up to the last file written: finish the agent step (or the checkpoint
    # being written), save a checkpoint, stop (one process; several agree on the step
    # through JAX's preemption service, which owns SIGTERM)
    stopped_by = None
    with host.StopSignals(STOP_SIGNALS if parallel.process_count() == 1 else ()) as stop:
        try:
            while step < domain.total_steps:
                key, act_key = jax.random.split(key)
                actions = parallel.from_primary(domain.explore(pstate, obs, act_key, step, rng))
                rec = env.step(actions)
                domain.store(replay, obs, actions, rec)
                obs = rec.obs
                step += 1
                for score in rec.score[rec.episode_end]:
                    episodes += 1
                    latest_score = float(score)
                    metrics_writer.write(step, {runlog.EPISODE_SCORE: latest_score,
                                                "episode/count": episodes})
                if step >= domain.learning_starts:
                    for _ in range(domain.updates_per_step):
                        key, update_key = jax.random.split(key)
                        batch = domain.sample(replay, step, rng)
                        pstate, metrics = train_step(pstate, batch, update_key)
                        updates += 1
                        check_finite(updates, step, metrics, run.root)
                        domain.after_update(replay, batch, metrics)
                        window.append({k: v for k, v in metrics.items() if np.ndim(v) == 0})
                if _due(step, unit, cfg.run.log_every) or step == domain.total_steps:
                    elapsed = time.monotonic() - start_time
                    row = _window_means(window)
                    window = []
                    row["perf/sps"] = (step - start_step) / max(elapsed, 1e-9)
                    row["perf/env_steps"] = step * domain.env_steps_per_step
                    metrics_writer.write(step, row)
                    parallel.check_same_across_processes(
                        {"step": step, "episodes": episodes, "latest_score": latest_score,
                         "observation_sum": float(np.sum(obs, dtype=np.int64))},
                        f"the environment at agent step {step}")
                if _due(step, unit, cfg.run.eval_every) and step < domain.total_steps:
                    key, eval_key = jax.random.split(key)
                    try:
                        scores = run_eval(eval_key).scores
                        metrics_writer.write(step, {runlog.EVAL_MEAN: float(scores.mean()),
                                                    runlog.EVAL_STD: float(scores.std())})
                    except EvaluationStopped:
                        log(f"[mlr-jax] evaluation at agent step {step} abandoned "
                            f"({stop.requested}); it is not in metrics.jsonl")
                if _due(step, unit, cfg.run.checkpoint_every):
                    save_checkpoint()
                progress.update(step * unit, score=latest_score, episodes=episodes)
                if parallel.stop_agreed(step, stop.requested is not None) and step < domain.total_steps:
                    stopped_by = stop.requested or "SIGTERM"
                    break
            save_checkpoint()  # a stop signal now waits for it: the checkpoint stays whole
            if stopped_by is None:
                key, eval_key = jax.random.split(key)
                scores, video, protocol = run_eval(eval_key, record=VIDEO_FRAMES)
                # from here on a stop signal changes nothing: the results are written whole
                metrics_writer.write(step, {runlog.EVAL_MEAN: float(scores.mean()),
                                            runlog.EVAL_STD: float(scores.std())})
                summary = evaluation.summarize_scores(kind, name, scores.tolist(),
                                                      budget=domain.budget)
                summary.update(agent_steps=step, env_steps=step * domain.env_steps_per_step,
                               protocol=protocol, **evaluation.preset_note(cfg.run.preset))
                if primary:
                    _write_results(run, cfg, domain, summary, video, counts, wall_time=wall_time())
                    if tracker is not None:
                        tracker.media(step, run.learning_curve, run.eval_video)
        except EvaluationStopped:
            stopped_by = stop.requested
        except NonFiniteUpdate:
            metrics_writer.close()  # every row up to the bad update stays on disk
            raise
        finally:
            progress.close()
            env.close()

    metrics_writer.close()
    if stopped_by is not None:
        raise TrainingInterrupted(step, run.root, stopped_by, final=step == domain.total_steps)
    note = f" ({summary['note']})" if "note" in summary else ""
    log(f"[mlr-jax] final evaluation: {summary['mean']:.2f} ± {summary['std']:.2f} over "
        f"{len(scores)} episodes{note}")
    log(f"[mlr-jax] results in {run.root} (final_eval.json, summary.md, metrics.jsonl, "
        f"learning_curve.png, eval.gif, tb/, checkpoints/)")
    return RunResult(run_dir=run.root, steps=step, final_eval=summary)


def _write_results(run: runlog.RunDir, cfg: AtariConfig | DMCConfig, domain: Domain,
                   summary: dict[str, Any], video: np.ndarray, counts: dict[str, int],
                   wall_time: float) -> None:
    """The end-of-run files: final_eval.json, eval.gif, learning_curve.png, summary.md."""
    kind, name, seed = domain_of(cfg), name_of(cfg), cfg.run.seed
    runlog.write_json(run.final_eval, summary)
    runlog.write_gif(run.eval_video, video)
    reference = {f"paper {m}": r["mean"] for m, r in summary.get("paper", {}).items()}
    runlog.plot_learning_curve(run.metrics_jsonl, run.learning_curve,
                               title=f"{kind} {name} ({cfg.aux}, seed {seed})", reference=reference,
                               step_scale=domain.unit,
                               xlabel="agent step" if domain.unit == 1 else "environment step")
    runlog.write_summary(run.summary, f"{kind} {name} ({cfg.aux}, seed {seed})", summary,
                         param_counts=counts,
                         run_info={"agent steps": summary["agent_steps"],
                                   "env steps": summary["env_steps"],
                                   "device": parallel.device_description(),
                                   "processes": parallel.process_count(),
                                   "wall time (s)": round(wall_time, 1)},
                         note=summary.get("note"))
