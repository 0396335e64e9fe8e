"""The ``mlr-jax`` command line: ``train``, ``sweep``, ``eval``, ``config``, ``report`` and
``bench``.

The only module that parses arguments: it turns them into a validated config
(:func:`mlr_jax.config.make_config`) and calls the library.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import Sequence

from mlr_jax.config import (
    AUX_OBJECTIVES,
    DMC_BUDGETS,
    ConfigError,
    apply_overrides,
    check_local_path,
    domain_of,
    make_config,
    name_of,
    to_dict,
    validate,
)
from mlr_jax import host
from mlr_jax.checkpoint import CheckpointError, DiskFull
from mlr_jax.logging import NotWritten
from mlr_jax.parallel import ParallelError

NON_FINITE_EXIT = 3  # exit status of a run stopped by a non-finite update
DISK_FULL_EXIT = 4  # exit status of a run stopped by a full disk (the last checkpoint is intact)

EPILOG = """examples:
  mlr-jax train atari --game pong --seed 1                 # the paper setting (MLR)
  mlr-jax train atari --game pong --seeds 0-7              # 8 seeds in one seed-batched step
  mlr-jax train atari --game pong --aux none                # the paper's Baseline
  mlr-jax train atari --game pong --preset smoke            # tiny run of the same code path
  mlr-jax train dmc --task cartpole_swingup --budget 500k
  mlr-jax train atari --game pong mlr.block_size=4 lr=3e-4  # any config field (dotted keys)
  mlr-jax train atari --resume runs/atari_pong_mlr_s1_...   # continue from the last checkpoint
  mlr-jax train atari --game pong --distributed             # every host of a TPU pod slice runs this
  mlr-jax sweep atari --games all --seeds 0-9 --aux mlr,none  # the paper's Atari-100k benchmark
  mlr-jax sweep dmc --tasks all --budget 500k --seeds 0-9 --shard 0/4  # a quarter of DMControl-500k
  mlr-jax eval runs/atari_pong_mlr_s1_... --episodes 10     # evaluate the latest checkpoint again
  mlr-jax config dmc --task walker_walk                     # print the resolved config
  mlr-jax report runs/ --compare mlr,none                   # finished runs: CIs, profiles, curves, scores.csv
  mlr-jax bench --domain atari --preset smoke --frameworks jax
"""


def _add_run_options(p: argparse.ArgumentParser, domain: str) -> None:
    if domain == "atari":
        p.add_argument("--game", default=None, help="Atari game, snake_case (default: pong)")
    else:
        p.add_argument("--task", default=None, help="DMC task, e.g. cartpole_swingup (default)")
    aux = AUX_OBJECTIVES[domain]
    p.add_argument("--aux", choices=aux, default=None,
                   help=f"auxiliary objective: {', '.join(aux)} (default mlr; none = the "
                        f"paper's Baseline" + ("; spr = SPR's own objective)" if "spr" in aux else ")"))
    p.add_argument("--seed", type=int, default=None)
    _add_common_options(p, domain)


def _add_sweep_options(p: argparse.ArgumentParser, domain: str) -> None:
    names = ("--games", "Atari games") if domain == "atari" else ("--tasks", "DMC tasks")
    p.add_argument(names[0], required=True, dest="names",
                   help=f"{names[1]}, comma-separated, or all (the paper's "
                        f"{'26 games' if domain == 'atari' else 'six tasks'})")
    p.add_argument("--seeds", required=True, help="e.g. 0-9 or 0,3,5")
    p.add_argument("--aux", dest="auxes", default="mlr,none",
                   help=f"objectives, comma-separated, of {', '.join(AUX_OBJECTIVES[domain])} "
                        "(default mlr,none: MLR and the Baseline)")
    p.add_argument("--group-size", type=int, default=None,
                   help="seeds trained together in one seed-batched step (default: all)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="take jobs I, I+N, I+2N, ... of the grid (an array job's task I of N)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (jobs, group sizes, memory per device and per host, "
                        "time from the latest bench records) and exit: 0 if it fits, 2 if not "
                        "even one seed fits")
    p.add_argument("--device-memory", default=None, metavar="SIZE",
                   help="plan for devices of this size, e.g. 80GiB (an H100) or 16GiB (a TPU "
                        "v5e chip); default: this machine's accelerator, if any")
    p.add_argument("--devices", type=int, default=None, help="plan for this many devices per host")
    p.add_argument("--hosts", type=int, default=1, help="plan for this many hosts")
    p.set_defaults(game=None, task=None, aux=None, seed=None)
    _add_common_options(p, domain)


def _add_common_options(p: argparse.ArgumentParser, domain: str) -> None:
    if domain == "atari":
        p.add_argument("--steps", type=int, default=None,
                       help="agent steps (default 100000 = Atari-100k; 4 frames each)")
    else:
        p.add_argument("--budget", choices=sorted(DMC_BUDGETS), default=None,
                       help="ENVIRONMENT-step budget (100k or 500k); agent steps = "
                            "budget / action repeat of the task")
        p.add_argument("--env-steps", type=int, default=None,
                       help="ENVIRONMENT steps (overrides --budget); agent steps = env steps / action repeat")
        p.add_argument("--env-backend", choices=("envpool", "dm_control"), default=None,
                       help="envpool (default, fast) or dm_control (the suite itself, as the "
                            "authors ran it through dmc2gym)")
    p.add_argument("--preset", default="paper",
                   help="paper (default), smoke (tiny, same code path), toy (the learning tests' "
                        "toy tasks) or cpu (reduced sizes for real tasks on a CPU)")
    p.add_argument("--eval-episodes", type=int, default=None)
    unit = "agent steps" if domain == "atari" else "ENVIRONMENT steps"
    p.add_argument("--eval-every", type=int, default=None, help=f"{unit} between evaluations (0: final only)")
    p.add_argument("--outdir", default=None,
                   help="parent of the run directory (default: runs); a sweep's directory "
                        "(default: runs/sweep_<domain>)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default=None,
                   help="matmuls and convolutions: tf32 (default: TF32 on GPUs that have it, as the "
                        "authors' torch; float32 on CPUs), fp32 (full float32) or bf16")
    p.add_argument("--no-progress", action="store_true",
                   help="print lines instead of a progress bar (a resumed run shows the bar "
                        "again unless given this once more)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="any config field, dotted for sections (mlr.block_size=4, run.log_every=500)")


def _add_distributed_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "multi-process (multi-host) training",
        "start the same command in every process; one process per host. On Cloud TPU pod "
        "slices, SLURM and other clusters JAX detects, --distributed alone is enough.")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run (jax.distributed.initialize) spanning every "
                        "host's devices; process 0 writes the run directory")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0's coordinator service (implies --distributed)")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)


def _start_distributed(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` when the arguments ask for several processes."""
    manual = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(v is None for v in manual):
        return
    if any(v is None for v in manual) and any(v is not None for v in manual):
        raise ConfigError("--coordinator, --num-processes and --process-id go together; got "
                          f"{args.coordinator!r}, {args.num_processes!r}, {args.process_id!r}")
    if args.num_processes is not None and not 0 <= args.process_id < args.num_processes:
        raise ConfigError(f"--process-id={args.process_id} must be in [0, {args.num_processes})")
    from mlr_jax import parallel

    try:
        parallel.initialize_distributed(*manual)
    except ValueError as e:  # JAX found no cluster to take the missing values from
        raise ConfigError(f"--distributed: {e} JAX detects Cloud TPU, SLURM and a few other "
                          "clusters; elsewhere give --coordinator, --num-processes and "
                          "--process-id") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlr-jax", description="Mask-based Latent Reconstruction (MLR) for RL in JAX/Flax.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{train,sweep,eval,config,report,bench}")
    train = sub.add_parser("train", help="train an agent (MLR or Baseline) and evaluate it")
    sweep = sub.add_parser("sweep", help="train a whole grid (games or tasks x objectives x "
                                         "seeds), restartable, across processes")
    domains = sweep.add_subparsers(dest="domain", required=True, metavar="{atari,dmc}")
    for domain in ("atari", "dmc"):
        d = domains.add_parser(domain, help=f"a grid of {domain} runs")
        _add_sweep_options(d, domain)
        _add_distributed_options(d)
    config = sub.add_parser("config", help="print the fully resolved configuration as JSON")
    for p, with_resume in ((train, True), (config, False)):
        domains = p.add_subparsers(dest="domain", required=True, metavar="{atari,dmc}")
        for domain in ("atari", "dmc"):
            d = domains.add_parser(domain, help=f"{domain} agent")
            _add_run_options(d, domain)
            if with_resume:
                d.add_argument("--seeds", default=None, metavar="SEEDS",
                               help="train several seeds together, one run directory each "
                                    "(e.g. 0-7 or 0,3,5): one jitted step updates them all")
                d.add_argument("--resume", default=None, metavar="RUN_DIR",
                               help="continue a run (and the seeds trained with it) from its "
                                    "latest checkpoint")
                _add_distributed_options(d)
    evaluate = sub.add_parser("eval", help="evaluate a run's saved agent again (its latest or a given checkpoint)")
    evaluate.add_argument("run_dir", help="a run directory (runs/<domain>_<name>_...)")
    evaluate.add_argument("--step", type=int, default=None,
                          help="the checkpoint's agent step (default: the latest)")
    evaluate.add_argument("--episodes", type=int, default=None,
                          help="episodes (default: the run's run.eval_episodes)")
    evaluate.add_argument("--seed", type=int, default=None,
                          help="seed of the evaluation environments (default: the run's, so the "
                               "final checkpoint reproduces final_eval.json)")
    evaluate.add_argument("--gif", action="store_true",
                          help="also write the first episode as evals/step_<step>.gif")
    report = sub.add_parser("report", help="aggregate the final evaluations of the runs below a "
                                           "directory: intervals, profiles, curves, scores.csv")
    report.add_argument("root", help="directory holding run directories (searched recursively)")
    report.add_argument("--compare", default=None, metavar="X,Y",
                        help="probability of improvement of method X over Y only, e.g. mlr,none "
                             "(default: every ordered pair of methods present)")
    report.add_argument("--reps", type=int, default=None,
                        help="bootstrap replicates (default 2000, seconds for 26 games x 10 "
                             "seeds x 2 methods; 50000 for a paper's figure)")
    report.add_argument("--out", default=None, help="where the report goes (default: ROOT)")
    bench = sub.add_parser("bench", help="time one update of the JAX agent and the PyTorch port")
    bench.add_argument("--domain", choices=("atari", "dmc"), required=True)
    bench.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    bench.add_argument("--preset", choices=("paper", "smoke", "cpu", "toy"), default="paper",
                       help="the config preset (toy: the learning tests' toy tasks, for --loop)")
    bench.add_argument("--frameworks", default="jax,torch",
                       help="comma-separated: jax,torch,torch-glibc (torch-glibc: the torch port in a "
                            "child process with glibc's default allocator, as the authors' code runs)")
    bench.add_argument("--convs", type=int, default=0, metavar="BATCH",
                       help="time only the conv trunk (forward, forward+backward) of each "
                            "implementation at this batch size, e.g. 128")
    bench.add_argument("--seeds", type=int, default=1, metavar="S",
                       help="seeds per update, as a --seeds group trains them (JAX only); the "
                            "record gives seed-updates per second")
    bench.add_argument("--loop", type=int, default=0, metavar="STEPS",
                       help="time the whole training loop instead (acting, environment, replay, "
                            "updates) over STEPS agent steps of updates, --seeds S at once")
    bench.add_argument("--host-only", action="store_true",
                       help="with --loop: every update a no-op of the same inputs and outputs, so "
                            "the record times the loop's host work (host_ms_per_seed_step, "
                            "envpool's share apart) and counts its device-to-host copies")
    bench.add_argument("--parity", action="store_true",
                       help="compare one JAX update with the PyTorch port's on this device instead "
                            "(same state, batch and random draws; losses and gradient norms to "
                            "float32 rounding); exit status 1 on a mismatch")
    bench.add_argument("--envpool-steps", type=int, default=300, metavar="N",
                       help="agent steps of the envpool measurement in the record (0 skips it)")
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default=None,
                       help="JAX's run.precision (default tf32); the PyTorch port runs float32 "
                            "with torch's own TF32 settings, recorded in the JSON")
    bench.add_argument("--name", default=None, help="game / task (default: pong / cartpole_swingup)")
    bench.add_argument("--torch-threads", type=int, default=None)
    bench.add_argument("--outdir", default=None,
                       help="where the JSON record goes (default runs/bench; the repository's "
                            "committed records are in benchmarks/results)")
    bench.add_argument("--profile", default=None, metavar="DIR",
                       help="also trace two JAX updates with jax.profiler into DIR (a Perfetto "
                            "trace) and record the largest ops per update")
    bench.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def requested_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The game/task named on the command line and the overrides its flags and KEY=VALUE
    arguments ask for (flags first, so KEY=VALUE arguments win)."""
    flags: dict[str, object] = {}
    if args.domain == "atari":
        name = args.game
        if args.steps is not None:
            flags["steps"] = args.steps
    else:
        name = args.task
        if args.budget is not None:
            flags["env_steps"] = DMC_BUDGETS[args.budget]
        if args.env_steps is not None:
            flags["env_steps"] = args.env_steps
        if args.env_backend is not None:
            flags["env_backend"] = args.env_backend
    for flag, key in (("aux", "aux"), ("seed", "run.seed"), ("eval_episodes", "run.eval_episodes"),
                      ("eval_every", "run.eval_every"), ("outdir", "run.outdir"),
                      ("precision", "run.precision")):
        if getattr(args, flag) is not None:
            flags[key] = getattr(args, flag)
    flags["run.progress"] = not args.no_progress  # display only: never inherited by --resume
    return name, [f"{k}={v}" for k, v in flags.items()] + list(args.overrides)


def config_from_args(args: argparse.Namespace):
    """The validated config that ``args`` describe, its game or task name checked too."""
    name, overrides = requested_overrides(args)
    cfg = make_config(args.domain, name, args.preset, overrides)
    try:
        from mlr_jax import envs
    except ImportError:  # no envpool (e.g. an image used only to benchmark updates): unchecked
        return cfg
    envs.check_name(cfg)
    return cfg


def _config(args: argparse.Namespace) -> int:
    print(json.dumps(to_dict(config_from_args(args)), indent=2))
    return 0


def parse_seeds(text: str) -> list[int]:
    """``"0-7"``, ``"0,3,5"`` or ``"0-3,8"`` -> the seeds, in the order given.

    Raises:
      ConfigError: a malformed item, a negative or repeated seed; the message names it.
    """
    seeds: list[int] = []
    for item in text.split(","):
        first, _, last = item.strip().partition("-")
        try:
            span = range(int(first), int(last or first) + 1)
        except ValueError:
            raise ConfigError(f"seeds {text!r}: {item!r} is not a seed or a range like 0-7") from None
        if not span:
            raise ConfigError(f"seeds {text!r}: the range {item!r} is empty")
        seeds.extend(span)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"seeds {text!r}: {', '.join(map(str, repeated))} given more than once")
    return seeds


def resumed_config(args: argparse.Namespace, run_dir):
    """The config of a run directory being resumed, with only what ``args`` give now on top
    (e.g. more ``--steps``)."""
    from mlr_jax import loop

    saved = loop.load_run_config(run_dir)
    if domain_of(saved) != args.domain:
        raise ConfigError(f"--resume {run_dir} is a run of the {domain_of(saved)} agent, "
                          f"not of the {args.domain} agent")
    name, overrides = requested_overrides(args)
    if name is not None and name != name_of(saved):
        raise ConfigError(f"--resume {run_dir} trains {name_of(saved)!r}, not {name!r}")
    return validate(apply_overrides(saved, overrides))


def _train(args: argparse.Namespace) -> int:
    _start_distributed(args)  # before anything else uses JAX
    from mlr_jax import loop  # heavy imports only when training

    resume = None
    if args.resume:
        if args.seeds is not None or args.seed is not None:
            raise ConfigError("--resume continues a run with its own seeds (and those trained "
                              "with it); leave out --seed and --seeds")
        resume = loop.group_members(args.resume)
        cfgs = [resumed_config(args, run_dir) for run_dir in resume]
    else:
        if args.seeds is not None and args.seed is not None:
            raise ConfigError(f"--seed {args.seed} and --seeds {args.seeds}: give one of them")
        cfg = config_from_args(args)
        cfgs = loop.seed_configs(cfg, parse_seeds(args.seeds) if args.seeds else [cfg.run.seed])
    try:
        loop.train_group(cfgs, resume=resume)
    except loop.TrainingInterrupted as e:
        print(f"[mlr-jax] {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except loop.NonFiniteUpdate as e:
        print(f"mlr-jax: error: {e}", file=sys.stderr, flush=True)
        return NON_FINITE_EXIT
    return 0


def _sweep(args: argparse.Namespace) -> int:
    if args.shard is not None and (args.distributed or args.coordinator is not None):
        raise ConfigError("--shard and --distributed both pick this process's share; give one")
    shard = (0, 1)
    if args.shard is not None:
        from mlr_jax.sweep import parse_shard

        shard = parse_shard(args.shard)
    _start_distributed(args)  # before anything else uses JAX
    from mlr_jax import loop, parallel, sweep
    from mlr_jax.config import ATARI_GAMES, DMC_PAPER_TASKS

    together = parallel.process_count() > 1
    if together:
        shard = parallel.work_alone()
    every = ATARI_GAMES if args.domain == "atari" else DMC_PAPER_TASKS
    names = list(every) if args.names == "all" else [n.strip() for n in args.names.split(",")]
    auxes = [a.strip() for a in args.auxes.split(",")]
    seeds = parse_seeds(args.seeds)
    _, overrides = requested_overrides(args)
    outdir = args.outdir or f"runs/sweep_{args.domain}"
    check_local_path(outdir, "--outdir")

    def make(name: str, aux: str):
        args.aux, args.game, args.task = aux, name, name
        return config_from_args(args)

    for name in names:  # every name and objective checked before anything runs
        for aux in auxes:
            make(name, aux)
    if args.dry_run or (args.group_size is None and parallel.on_accelerator()):
        from mlr_jax import plan

        # a dry run plans for what it is told; a sweep on accelerators for this runtime
        devices, hosts = ((args.devices, args.hosts) if args.dry_run
                          else (None, parallel.process_count()))
        groups, text = plan.sweep_plan(args.domain, names, auxes, seeds, make, args.group_size,
                                       args.device_memory, devices, hosts)
        print(text, flush=True)
        if args.dry_run:
            return 0 if groups else 2
        if not groups:
            raise ConfigError("not even one seed fits a device; see the plan above")
        args.group_size = min(groups.values())
    spec = {"preset": args.preset, "overrides": [o for o in overrides if o != "run.progress=False"
                                                 and o != "run.progress=True"]}
    try:
        result = sweep.run_sweep(outdir, args.domain, names, auxes, seeds, make, spec,
                                 group_size=args.group_size, shard=shard, together=together)
    except loop.TrainingInterrupted as e:
        print(f"[sweep] stopped by {e.signal_name}; checkpoints saved. Run the same command "
              "again to continue the sweep", file=sys.stderr, flush=True)
        return e.exit_code
    for job, error in result.failed:
        print(f"mlr-jax: error: sweep job {job} failed: {error}", file=sys.stderr, flush=True)
    return NON_FINITE_EXIT if result.failed else 0


def _eval(args: argparse.Namespace) -> int:
    from mlr_jax import loop  # heavy imports only when evaluating

    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {args.episodes}")
    loop.evaluate_checkpoint(args.run_dir, step=args.step, episodes=args.episodes, seed=args.seed,
                             gif=args.gif)
    return 0


def _report(args: argparse.Namespace) -> int:
    from mlr_jax import report

    compare = None
    if args.compare:
        compare = tuple(m.strip() for m in args.compare.split(","))
        if len(compare) != 2 or not all(compare):
            raise ConfigError(f"--compare takes two methods, X,Y (P(X > Y)), got {args.compare!r}")
    reps = report.stats.DEFAULT_REPS if args.reps is None else args.reps
    if reps < 100:
        raise ConfigError(f"--reps must be at least 100, got {reps}")
    try:
        text, _, warnings = report.report_directory(args.root, compare, reps, args.out)
    except report.ReportError as e:
        raise ConfigError(str(e)) from None
    for warning in warnings:
        print(f"[mlr-jax] warning: {warning}", file=sys.stderr)
    print(text)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mlr_jax.bench.runner import FRAMEWORKS, run_benchmark
    from mlr_jax.bench.timing import DEFAULT_OUTDIR

    args.outdir = args.outdir or DEFAULT_OUTDIR
    precision = [f"run.precision={args.precision}"] if args.precision else []
    if args.loop:
        from mlr_jax.bench.loop_sps import run_loop_benchmark

        record = run_loop_benchmark(args.domain, args.preset, args.seeds, args.loop, name=args.name,
                                    overrides=[*precision, *args.overrides],
                                    outdir=args.outdir, host_only=args.host_only)
        print(record["summary"])
        return 0
    if args.host_only:
        raise ConfigError("--host-only times the training loop: give --loop STEPS")
    if args.parity:
        from mlr_jax.bench.parity import run_parity

        record = run_parity(args.domain, args.device, args.preset, args.outdir, args.overrides)
        print(record["summary"])
        return 0 if record["ok"] else 1
    if args.convs:
        from mlr_jax.bench.convs import conv_summary, run_conv_benchmark

        record = run_conv_benchmark(args.domain, args.device, args.preset, args.convs,
                                    args.repeats, args.outdir)
        print(conv_summary(record))
        return 0

    frameworks = tuple(f.strip() for f in args.frameworks.split(",") if f.strip())
    unknown = set(frameworks) - set(FRAMEWORKS)
    if unknown or not frameworks:
        raise ConfigError(f"--frameworks must list some of {','.join(FRAMEWORKS)}, got {args.frameworks!r}")
    result = run_benchmark(domain=args.domain, device=args.device, preset=args.preset,
                           frameworks=frameworks, repeats=args.repeats, warmup=args.warmup,
                           outdir=args.outdir, name=args.name, torch_threads=args.torch_threads,
                           profile_dir=args.profile, num_seeds=args.seeds, env_steps=args.envpool_steps,
                           overrides=[*precision, *args.overrides])
    print(result["summary"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may stand anywhere on the line, also after options (argparse alone
    # takes only the first run of positionals)
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    commands = {"config": _config, "train": _train, "sweep": _sweep, "eval": _eval,
                "report": _report, "bench": _bench}
    try:
        shards = 1
        if getattr(args, "shard", None) is not None:
            from mlr_jax.sweep import parse_shard

            shards = parse_shard(args.shard)[1]
        host.device_memory_policy(args.command, shards)  # before JAX starts a backend
        with host.xla_alarms_hidden():
            code = commands[args.command](args)
            sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except DiskFull as e:
        parser.exit(DISK_FULL_EXIT, f"mlr-jax: error: {e}\n")
    except (ConfigError, ParallelError, CheckpointError, FileNotFoundError, NotWritten) as e:
        parser.exit(2, f"mlr-jax: error: {e}\n")
    except BrokenPipeError:  # e.g. `mlr-jax config atari | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        parser.exit(DISK_FULL_EXIT, f"mlr-jax: error: disk full writing {e.filename or 'a file'}: "
                                    f"{e.strerror}; free some space (a training run continues "
                                    "with --resume from its last checkpoint)\n")


if __name__ == "__main__":
    sys.exit(main())
