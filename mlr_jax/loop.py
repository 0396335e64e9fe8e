"""The training loop shared by both domains: act, store, update, evaluate, log, checkpoint.

``train_group(cfgs)`` trains a group of runs, one config with several seeds, as one program
(``train(cfg)`` is a group of one), in the named phases of :class:`_Group`: its set-up builds
each seed's environment and replay, the domain adapter (:mod:`mlr_jax.domains`: agent,
exploration, batch sampling), the seed-batched, data-parallel train step
(:mod:`mlr_jax.parallel`) and the run directories (:mod:`mlr_jax.logging`); then every agent
step acts for every seed at once (``act``), steps each seed's environment and stores its
transition (``store``) and, once learning has started, runs ``updates_per_step`` updates of
every seed at once (``learn``; DMC before the environment step, Atari after, as the authors'
loops), and periodically logs (with the milliseconds of each phase), evaluates and
checkpoints each run. Every run ends with its final evaluation, ``final_eval.json``,
``learning_curve.png`` and ``summary.md``.

In a multi-process run (:func:`mlr_jax.parallel.initialize_distributed`) every process runs
this same loop on the same environment and replay, takes the primary's actions, and checks at
every log row that the processes still agree; only the primary writes the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import time
from time import perf_counter  # the phase timers' clock (time.monotonic: the runs' wall time)
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from mlr_jax import checkpoint, envs, evaluation, host, learners, parallel, plan
from mlr_jax import logging as runlog
from mlr_jax.agents.common import FINITE, precision_record
from mlr_jax.config import AtariConfig, ConfigError, DMCConfig, domain_of, from_dict, name_of, to_dict
from mlr_jax.domains import Domain, make_domain
from mlr_jax.envs import Step
from mlr_jax.envs.group import GroupEnv
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


@dataclasses.dataclass
class RunResult:
    """What a finished :func:`train` returns."""

    run_dir: pathlib.Path
    steps: int
    final_eval: dict[str, Any]
    seed: int


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

    ``state`` is one seed's training state, on the devices.
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


def _restore(run: runlog.RunDir, cfg, state, replay, log=print):
    """Load the newest readable checkpoint of ``run`` into ``state`` (a target pytree) and
    ``replay``."""
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
    scores, video, protocol = evaluate(domain, cfg, parallel.to_device(state), episodes,
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
    try:
        data = json.loads(run.config.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{run.config} is not valid JSON ({e.msg} at line {e.lineno} column "
                          f"{e.colno}): it is the configuration the run was started with; "
                          "restore it to resume, or start a new run") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{run.config} holds {type(data).__name__}, not a run's configuration")
    cls = AtariConfig if "game" in data else DMCConfig
    return from_dict(cls, data)


GROUP_FILE = "group.json"  # in each run directory of a group: its members, for --resume


def seed_configs(cfg: AtariConfig | DMCConfig, seeds: list[int]) -> list[AtariConfig | DMCConfig]:
    """``cfg`` once per seed (``run.seed``): the configs of a group of runs."""
    return [dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=s)) for s in seeds]


def group_members(run_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """The run directories trained together with ``run_dir`` (its group, in seed order; just
    ``run_dir`` for a run trained alone)."""
    run_dir = pathlib.Path(run_dir)
    path = run_dir / GROUP_FILE
    if not path.is_file():
        return [run_dir]
    return [run_dir.parent / name for name in json.loads(path.read_text())["runs"]]


def _check_group(cfgs: list[AtariConfig | DMCConfig]) -> None:
    """A group's configs differ in ``run.seed`` only, and no seed comes twice."""
    if not cfgs:
        raise ConfigError("a group needs at least one run")
    seeds = [c.run.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds}: every seed of a group must differ")
    first = to_dict(cfgs[0])
    for c in cfgs[1:]:
        data = to_dict(c)
        data["run"]["seed"] = first["run"]["seed"]
        if data != first:
            differ = sorted(k for k in first if first[k] != data[k])
            raise ConfigError(f"the runs of a group must share their config except run.seed; "
                              f"seed {c.run.seed} differs in {', '.join(differ)}")


def seed_list(seeds: list[int]) -> str:
    """``0-7`` for consecutive seeds, else ``0,3,5``."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


@dataclasses.dataclass
class _Member:
    """One run of a group: its replay, run directory and counters (its environment stream is
    its part of the group's :class:`~mlr_jax.envs.group.GroupEnv`)."""

    cfg: AtariConfig | DMCConfig
    replay: Any
    rng: np.random.Generator
    run: runlog.RunDir | None = None
    writer: Any = None
    tracker: Any = None
    episodes: int = 0
    latest_score: float = float("nan")
    wall_before: float = 0.0


def train(cfg: AtariConfig | DMCConfig, resume: str | pathlib.Path | None = None,
          log=print) -> RunResult:
    """Train the agent of ``cfg`` alone and evaluate it: :func:`train_group` of one run."""
    return train_group([cfg], None if resume is None else [resume], log=log)[0]


def train_group(cfgs: list[AtariConfig | DMCConfig], resume: list[str | pathlib.Path] | None = None,
                log=print, desc: str | None = None,
                on_start: Callable[[list[pathlib.Path]], None] | None = None,
                host_only: bool = False) -> list[RunResult]:
    """Train the agents of ``cfgs`` (one game or task, one config, several seeds) together
    and evaluate each.

    The seeds' states are stacked and updated by one jitted step, vmapped over the seeds and
    laid out on the devices by :func:`mlr_jax.parallel.layout`. Each seed has its own key,
    environment stream (seeded as a run of its own), replay, exploration and run directory,
    so it trains as it would alone: the same environment trajectory, batches and updates up
    to float rounding (``tests/test_seed_groups.py``).

    Args:
      cfgs: validated configs (:func:`mlr_jax.config.make_config`, :func:`seed_configs`)
        that differ in ``run.seed`` only.
      resume: one existing run directory per config: continue from their latest checkpoints
        (same config, except fields such as ``steps`` that do not change shapes), which must
        be of the same agent step. A group stopped after its last step (during the final
        checkpoint or evaluation) only runs the final evaluation.
      log: where to print start-up and end-of-run lines.
      desc: the progress display's label (default ``<domain>:<name>`` and the seeds).
      on_start: called with the run directories (in the order of ``cfgs``) once they exist,
        before the first step (a sweep's ledger records them); primary process only.
      host_only: replace every update by a no-op of the same inputs and outputs (the state
        passes through and the metrics are constants of their shapes, so XLA drops the
        update's work): the loop's host work alone (``mlr-jax bench --loop --host-only``).

    Before anything slow is built, it refuses (``ConfigError`` / ``CheckpointError``) a
    batch that does not divide over the devices, a group that cannot fit in memory
    (:func:`mlr_jax.plan.check_group`), an unwritable ``run.outdir`` and, with
    ``resume``, a checkpoint of another format or config.
    """
    group = _Group(cfgs, resume, log, desc, host_only)
    if group.primary and on_start is not None:
        on_start([m.run.root for m in group.members])
    return group.run()


def _noop_update(train_step: Callable[..., Any]) -> Callable[..., Any]:
    """``train_step`` with the same inputs and output shapes that changes nothing: the state
    passes through, every metric is a constant (True for the finite flag; priorities of 1)."""

    def step(state, batch, key, axis_name=None):
        _, metrics = train_step(state, batch, key, axis_name=axis_name)  # shapes only: no output uses it
        return state, jax.tree.map(lambda m: jax.numpy.ones(m.shape, m.dtype), metrics)

    return step


# timed per agent step: perf/ms_<phase> (a log row's own time counts in the next row's "log")
PHASES = ("act", "env", "store", "sample", "update", "log")


class _Group:
    """One group's training, as named phases over explicit state.

    ``__init__`` checks the configs, then builds the environments, replays, agent state and
    run directories (or restores them). :meth:`run` repeats :meth:`agent_step` -- :meth:`act`,
    :meth:`store` and :meth:`learn` (DMC learns before the environment step, as the authors'
    CURL loop does; Atari after, as rlpyt's) -- then :meth:`log_row`, :meth:`evaluate_due`
    and :meth:`save_checkpoint` when due, and ends with each run's final evaluation.
    """

    def __init__(self, cfgs, resume, log, desc, host_only):
        _check_group(cfgs)
        cfg = self.cfg = cfgs[0]
        kind, name, seeds = domain_of(cfg), name_of(cfg), [c.run.seed for c in cfgs]
        self.primary = parallel.is_primary()  # the process that writes files and prints
        self.log = log = log if self.primary else _quiet
        envs.check_name(cfg)
        layout = self.layout = parallel.layout(len(cfgs))
        for field in ("batch_size", "aux_batch_size"):  # fail before anything is built
            if hasattr(cfg, field):
                parallel.check_divisible(getattr(cfg, field), layout.data_shards, field)
        memory = plan.check_group(cfg, len(cfgs))
        runlog.check_wandb(cfg.run.wandb)
        if resume is not None:
            if len(resume) != len(cfgs):
                raise ConfigError(f"{len(resume)} run directories to resume for {len(cfgs)} configs")
            runs = [runlog.RunDir.open(r) for r in resume]
            for run, c in zip(runs, cfgs):
                checkpoint.check_resumable(run.checkpoints, to_dict(c))
        elif self.primary:
            runlog.RunDir.check_outdir(cfg.run.outdir)
        self.env = GroupEnv(lambda n, seed: envs.make_env(cfg, n, seed, evaluation=False), seeds)
        self.obs = None  # every seed's observation, uint8[S, 1, C, H, W]
        members = self.members = [_Member(c, None, np.random.default_rng(c.run.seed)) for c in cfgs]
        domain = self.domain = make_domain(cfg, self.env.first, layout)
        device_sampler = parallel.sampler(cfg.run.sampler) == "device"  # its own frame copy
        on_device = parallel.replay_frames(cfg.run.replay_frames) == "device" and not device_sampler
        tables = device_frames.FrameTables(layout) if on_device else None
        for i, m in enumerate(members):
            m.replay = domain.make_replay(tables.mirror(i) if tables else None,
                                          eager_tree=not device_sampler)
        self.keys, init_keys = learners.split_keys(
            np.stack([np.asarray(jax.random.PRNGKey(s)) for s in seeds]))
        shapes = self.shapes = jax.eval_shape(domain.agent.init, jax.random.PRNGKey(0))  # one seed's
        self.step = 0
        if resume is not None:
            self.state = self._restore(runs, shapes)
        else:  # a resumed group never holds a second, initial state on its devices
            self.state = layout.stacked(domain.agent.init, init_keys, domain.axes)
            for m in members:
                root = (str(runlog.RunDir.create(cfg.run.outdir, kind, name, cfg.aux, m.cfg.run.seed).root)
                        if self.primary else "")
                m.run = runlog.RunDir(pathlib.Path(parallel.share_text(root)))  # the primary's, everywhere
        self.counts = domain.agent.param_counts(shapes)
        self._write_run_files(seeds)
        if parallel.process_count() > 1:
            log(f"[mlr-jax] {parallel.process_count()} processes, {parallel.device_count()} devices")
        log(f"[mlr-jax] {kind} {name} aux={cfg.aux} seed{'s' if len(seeds) > 1 else ''}="
            f"{seed_list(seeds)} -> " + ", ".join(str(m.run.root) for m in members))
        if len(members) > 1:
            log(f"[mlr-jax] {len(members)} seeds in one step: {layout.seed_shards} device(s) along "
                f"the seeds, {layout.data_shards} along each seed's batch")
        log("[mlr-jax] parameters: " + ", ".join(f"{k}={v:,}" for k, v in self.counts.items()))
        log(f"[mlr-jax] memory: {memory.describe()}")

        self.updates = int(np.asarray(self.state.step))  # updates done (both agents' states count them)
        update = _noop_update(domain.agent.train_step) if host_only else domain.agent.train_step
        self.learner = learners.make_learner(self, self.keys, update, tables)
        del self.keys  # the learner's now (on the devices with run.sampler=device)
        self.take = layout.take(domain.axes)
        for m in members:
            m.tracker = (runlog.WandbTracker(m.run, m.cfg.run.wandb, m.cfg.run.wandb_mode,
                                             to_dict(m.cfg))
                         if self.primary and cfg.run.wandb else None)
            m.writer = (runlog.MetricsWriter(m.run, keep_until=self.step if resume is not None else None,
                                             tracker=m.tracker)
                        if self.primary else runlog.NoMetrics())
        self.unit = domain.unit  # progress counts the steps the user gave: DMC environment steps
        self.progress = runlog.Progress(
            domain.total_steps * self.unit, initial=self.step * self.unit, enabled=cfg.run.progress,
            print_every=cfg.run.log_every,
            desc=desc or f"{kind}:{name}" + (f" seeds {seed_list(seeds)}" if len(seeds) > 1 else ""),
            unit="env step" if kind == "dmc" else "step", show=self.primary)
        self.seconds = dict.fromkeys(PHASES, 0.0)  # time in each phase since the last log row
        self.stop = None  # the stop signals' handler while running

    # ------------------------------------------------------------------ set-up

    def _restore(self, runs: list[runlog.RunDir], shapes: Any) -> Any:
        """Every seed's newest checkpoint: its replay, counters and keys; the stacked state."""
        restored, steps = [], []
        for i, (m, run) in enumerate(zip(self.members, runs)):
            m.run = run
            member_state, loop_state = _restore(run, m.cfg, shapes, m.replay, self.log)
            restored.append(member_state)
            steps.append(int(loop_state["step"]))
            m.episodes = int(loop_state["episodes"])
            m.latest_score = float(loop_state["latest_score"])
            m.wall_before = float(loop_state.get("wall_time", 0.0))  # absent before it was saved
            self.keys[i] = np.asarray(loop_state["key"])
            m.rng.bit_generator.state = loop_state["rng"]
        if len(set(steps)) != 1:
            raise checkpoint.CheckpointError(
                "the runs of a group resume together from the same agent step, but their latest "
                "checkpoints are at steps " + ", ".join(f"{s} ({r.root})" for s, r in zip(steps, runs)))
        self.step = steps[0]
        self.log(f"[mlr-jax] resuming {', '.join(str(r.root) for r in runs)} from step {self.step}")
        return self.layout.put(parallel.stack(restored, self.domain.axes), self.domain.axes)

    def _write_run_files(self, seeds: list[int]) -> None:
        """config.json, param_counts.json and, in a group, group.json of every run."""
        if not self.primary:
            return
        for m in self.members:
            runlog.write_json(m.run.config, to_dict(m.cfg))
            runlog.write_json(m.run.param_counts, self.counts)
            if len(self.members) > 1:
                runlog.write_json(m.run.root / GROUP_FILE, {
                    "seeds": seeds, "runs": [os.path.relpath(o.run.root, m.run.root.parent)
                                             for o in self.members]})

    # ------------------------------------------------------------------ phases

    def act(self) -> np.ndarray:
        """Every seed's action for its current observation, from one device program (the
        primary's, in every process): the agent step's one copy from the devices."""
        return parallel.from_primary(self._learner_call(self.learner.act))

    def store(self, actions: np.ndarray) -> None:
        """Every seed's environment takes its action (one call for the group), and each
        seed's replay stores its transition; the agent step is then taken (``self.step``
        counts it)."""
        self.step += 1
        with self.timed("env"):
            rec = self.env.step(actions)
        with self.timed("store"):
            for i, m in enumerate(self.members):
                mine = Step(*(x[i] for x in rec))
                self.domain.store(m.replay, self.obs[i], actions[i], mine)
                for score in mine.score[mine.episode_end]:
                    m.episodes += 1
                    m.latest_score = float(score)
                    m.writer.write(self.step, {runlog.EPISODE_SCORE: m.latest_score,
                                               "episode/count": m.episodes})
            self.obs = rec.obs
            self.learner.after_store(self)

    def learn(self, stored: int) -> None:
        """``updates_per_step`` updates of every seed once ``stored`` transitions reach
        ``learning_starts`` (the learner draws the batches, updates, writes priorities)."""
        if stored < self.domain.learning_starts:
            return
        for _ in range(self.domain.updates_per_step):
            self._learner_call(self.learner.learn, stored)
            self.updates += 1

    def _learner_call(self, method, *args):
        """``method(self, *args)``; a non-finite update it reports stops the run."""
        try:
            return method(self, *args)
        except learners.NonFinite as e:
            raise NonFiniteUpdate(e.update, e.step, e.metrics, self.members[e.seed].run.root) from None

    def agent_step(self) -> None:
        """One agent step of every seed: act, then store and learn in the domain's order."""
        with self.timed("act"):
            actions = self.act()
        if self.domain.learn_before_env_step:
            self.learn(stored=self.step)
            self.store(actions)
        else:
            self.store(actions)
            self.learn(stored=self.step)

    # ------------------------------------------------------------------ periodic work

    def timed(self, phase: str):
        """``with group.timed(phase):`` counts the block's time in ``perf/ms_<phase>``."""
        return _PhaseTimer(self.seconds, phase)

    def _due(self, every: int) -> bool:
        return _due(self.step, self.unit, every)

    def log_row(self) -> None:
        """Each run's metrics row: the update metrics' means since the last row, the agent
        steps per second, the milliseconds per agent step of each phase and, while
        :func:`mlr_jax.parallel.counting_transfers` counts, the device-to-host reads per
        agent step."""
        elapsed = max(time.monotonic() - self.start_time, 1e-9)
        steps = max(self.step - self.last_row_step, 1)
        phases = {f"perf/ms_{k}": 1000 * v / steps for k, v in self.seconds.items()}
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.last_row_step = self.step
        count = parallel.transfers()  # counted only while the bench or a test asks
        if count is not None:
            phases["perf/device_to_host"] = (count - self.last_row_transfers) / steps
            self.last_row_transfers = count
        agree = {"step": self.step}
        means = self._learner_call(self.learner.window_means)
        for i, m in enumerate(self.members):
            row = means[i]
            row["perf/sps"] = (self.step - self.start_step) / elapsed
            row["perf/env_steps"] = self.step * self.domain.env_steps_per_step
            m.writer.write(self.step, {**row, **phases})
            agree.update({f"episodes_{i}": m.episodes, f"latest_score_{i}": m.latest_score,
                          f"observation_sum_{i}": float(np.sum(self.obs[i], dtype=np.int64))})
        parallel.check_same_across_processes(agree, f"the environments at agent step {self.step}")

    def wall_time(self, m: _Member) -> float:
        return m.wall_before + time.monotonic() - self.start_time

    def save_checkpoint(self) -> None:
        """Every run's state, replay and loop counters at this step (only finite updates:
        the learner checks before the replays are synced)."""
        self._learner_call(self.learner.sync_replays)
        if not self.primary:
            return
        keys = self.learner.host_keys()
        for i, (m, member_state) in enumerate(zip(self.members,
                                                  self.layout.unstack(self.state, self.domain.axes))):
            loop_state = {"step": self.step, "episodes": m.episodes, "latest_score": m.latest_score,
                          "key": keys[i].copy(), "rng": m.rng.bit_generator.state,
                          "wall_time": self.wall_time(m)}
            checkpoint.save(m.run.checkpoints, self.step, member_state, m.replay.state_dict(),
                            loop_state, to_dict(m.cfg))

    def evaluation(self, i: int, eval_key: jax.Array, record: int = 0) -> Evaluation:
        m = self.members[i]
        return evaluate(self.domain, m.cfg, self.take(self.state, i), self.cfg.run.eval_episodes,
                        m.cfg.run.seed + EVAL_SEED_OFFSET, eval_key, record,
                        stop=lambda: self.stop.requested is not None)

    def evaluate_due(self) -> None:
        """The periodic evaluation of every seed (abandoned on a stop signal)."""
        eval_keys = self.learner.split_host_keys()
        for i, m in enumerate(self.members):
            try:
                scores = self.evaluation(i, eval_keys[i]).scores
            except EvaluationStopped:
                self.log(f"[mlr-jax] evaluation at agent step {self.step} abandoned "
                         f"({self.stop.requested}); it is not in metrics.jsonl")
                return
            m.writer.write(self.step, {runlog.EVAL_MEAN: float(scores.mean()),
                                       runlog.EVAL_STD: float(scores.std())})

    def after_step(self) -> None:
        """Log row, evaluation and checkpoint when due; the progress line."""
        total = self.domain.total_steps
        if self._due(self.cfg.run.log_every) or self.step == total:
            with self.timed("log"):
                self.log_row()
        if self._due(self.cfg.run.eval_every) and self.step < total:
            self.evaluate_due()
        if self._due(self.cfg.run.checkpoint_every):
            self.save_checkpoint()
        latest = [m.latest_score for m in self.members if not np.isnan(m.latest_score)]
        self.progress.update(self.step * self.unit,
                             score=float(np.mean(latest)) if latest else float("nan"),
                             episodes=sum(m.episodes for m in self.members))

    # ------------------------------------------------------------------ the run

    def run(self) -> list[RunResult]:
        """Agent steps until the run's end or a stop signal, then the final evaluations.

        Ctrl-C / SIGTERM, up to the last file written: finish the agent step (or the
        checkpoint being written), save a checkpoint, stop (one process; several agree on
        the step through JAX's preemption service, which owns SIGTERM)."""
        domain, members = self.domain, self.members
        parallel.barrier(f"mlr_jax_loop_start_{self.step}")  # hosts restore and compile at their own pace
        self.obs = self.env.reset()
        self.start_time, self.start_step = time.monotonic(), self.step
        self.last_row_step, self.last_row_transfers = self.step, parallel.transfers() or 0
        results, stopped_by = [], None
        with host.StopSignals(STOP_SIGNALS if parallel.process_count() == 1 else ()) as self.stop:
            try:
                while self.step < domain.total_steps:
                    self.agent_step()
                    self.after_step()
                    if (parallel.stop_agreed(self.step, self.stop.requested is not None)
                            and self.step < domain.total_steps):
                        stopped_by = self.stop.requested or "SIGTERM"
                        break
                self.save_checkpoint()  # a stop signal now waits for it: the checkpoint stays whole
                if stopped_by is None:
                    eval_keys = self.learner.split_host_keys()
                    for i, m in enumerate(members):
                        results.append(_final(domain, m, self.step,
                                              self.evaluation(i, eval_keys[i], VIDEO_FRAMES),
                                              self.counts, self.wall_time(m), self.primary))
            except EvaluationStopped:
                stopped_by = self.stop.requested
            except NonFiniteUpdate:
                for m in members:
                    m.writer.close()  # every row up to the bad update stays on disk
                raise
            finally:
                self.progress.close()
                self.env.close()
        for m in members:
            m.writer.close()
        if stopped_by is not None:
            raise TrainingInterrupted(self.step, members[0].run.root, stopped_by,
                                      final=self.step == domain.total_steps)
        for result in results:
            summary = result.final_eval
            note = f" ({summary['note']})" if "note" in summary else ""
            self.log(f"[mlr-jax] final evaluation of seed {result.seed}: {summary['mean']:.2f} ± "
                     f"{summary['std']:.2f} over {len(summary['scores'])} episodes{note}")
            self.log(f"[mlr-jax] results in {result.run_dir} (final_eval.json, summary.md, "
                     "metrics.jsonl, learning_curve.png, eval.gif, tb/, checkpoints/)")
        return results


class _PhaseTimer:
    """``with _PhaseTimer(seconds, phase):`` adds the block's wall time to ``seconds[phase]``."""

    def __init__(self, seconds: dict[str, float], phase: str):
        self.seconds, self.phase = seconds, phase

    def __enter__(self):
        self.t0 = perf_counter()

    def __exit__(self, *exc):
        self.seconds[self.phase] += perf_counter() - self.t0


def _final(domain: Domain, m: _Member, step: int, final: Evaluation, counts: dict[str, int],
           wall_time: float, primary: bool) -> RunResult:
    """Record one run's final evaluation; from here on a stop signal changes nothing: the
    results are written whole."""
    scores, video, protocol = final
    m.writer.write(step, {runlog.EVAL_MEAN: float(scores.mean()),
                          runlog.EVAL_STD: float(scores.std())})
    summary = evaluation.summarize_scores(domain.kind, domain.name, scores.tolist(),
                                          budget=domain.budget)
    summary.update(agent_steps=step, env_steps=step * domain.env_steps_per_step,
                   protocol=protocol, precision=precision_record(m.cfg.run.precision),
                   **evaluation.preset_note(m.cfg.run.preset))
    if primary:
        _write_results(m.run, m.cfg, domain, summary, video, counts, wall_time=wall_time)
        if m.tracker is not None:
            m.tracker.media(step, m.run.learning_curve, m.run.eval_video)
    return RunResult(run_dir=m.run.root, steps=step, final_eval=summary, seed=m.cfg.run.seed)


def _precision_text(precision: str) -> str:
    record = precision_record(precision)
    return (f"{precision} (matmuls and convolutions at {record['matmul_precision']}, layers in "
            f"{record['compute_dtype']})")


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
                                   "precision": _precision_text(cfg.run.precision),
                                   "processes": parallel.process_count(),
                                   "wall time (s)": round(wall_time, 1)},
                         note=summary.get("note"))
