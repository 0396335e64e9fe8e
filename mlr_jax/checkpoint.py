"""Save and restore a whole training run with orbax: agent state, replay, loop state, config.

One checkpoint is one step directory ``<ckpt_dir>/<step>/`` with four orbax items:

* ``state``  -- the agent's state pytree as host numpy arrays (typed PRNG keys as key data);
* ``replay`` -- the replay buffer's arrays (a nested dict of numpy arrays);
* ``loop``   -- counters, RNG states, episode statistics (JSON; numpy arrays, numpy scalars
  and tuples are tagged so they come back with their exact dtype and type);
* ``config`` -- the run's config dict (JSON).

Orbax writes a step into a temporary directory and renames it when every item is complete, so
a crash never leaves a half-written checkpoint that :func:`latest_step` would pick up. Saving
is synchronous; the last ``keep`` steps are kept. A complete step that was damaged later (a
file truncated or deleted) is set aside by :func:`restore`, which falls back to the
previous step. A save that finds the disk full raises :class:`DiskFull` (one line: the path,
the bytes needed and free) and leaves the earlier steps as they were.

Every checkpoint records :data:`FORMAT` and the mlr-jax version in its loop state;
:func:`check_resumable` reads only the newest step's small JSON items, so a checkpoint of
another format or config is refused before anything slow is built.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mlr_jax import parallel
from mlr_jax.host import format_bytes

# Config fields that fix array shapes or what the saved numbers mean; a checkpoint whose
# values differ from the current config's cannot be resumed.
COMPATIBILITY_KEYS: tuple[str, ...] = (
    "domain", "game", "task", "aux",
    "image_size", "crop_size", "frame_stack", "frame_skip", "action_repeat", "num_envs",
    "channels", "kernels", "strides", "hidden_size", "num_atoms",
    "num_filters", "num_conv_layers", "feature_dim", "hidden_dim",
    "replay_capacity",
    "mlr.seq_len", "mlr.patch_size", "mlr.block_size",
    "mlr.num_layers", "mlr.num_heads", "mlr.mlp_ratio",
)
_MISSING = "<missing>"
# The layout of a checkpoint's items; a checkpoint of another format is refused.
# 1: mlr-jax 0.1 (state fields momentum_params / mlr, mlr_opt, momentum);
# 2: mlr-jax 0.2, the auxiliary-objective seam (aux_target / aux, aux_opt, aux_target).
FORMAT = 2
FORMAT_KEY = "checkpoint_format"  # loop-state keys written by save()
VERSION_KEY = "mlr_jax_version"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable; the message names its path."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint does not fit the current run; the message names each differing key."""


class DiskFull(CheckpointError):
    """A checkpoint could not be written for lack of disk space. The message names the
    directory, the bytes needed and free, and the newest checkpoint, which is left intact."""


# --------------------------------------------------------------------------- helpers

def _manager(ckpt_dir: pathlib.Path, keep: int = 2) -> ocp.CheckpointManager:
    solo = {}
    me, processes = parallel.runtime_processes()
    if processes > 1:
        # In a multi-process run only the primary saves and every process restores on its
        # own, and a sweep's processes each save their own runs, so orbax must not wait for
        # the other processes (nor create the directory).
        solo = {"multiprocessing_options": ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me})}
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not solo, enable_async_checkpointing=False,
        cleanup_tmp_directories=True, **solo)
    return ocp.CheckpointManager(ckpt_dir, options=options)


def _is_typed_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _state_to_host(state: Any) -> Any:
    """Numpy copy of a state pytree; typed PRNG keys become their uint32 key data."""
    def leaf(x):
        return np.asarray(jax.device_get(jax.random.key_data(x) if _is_typed_key(x) else x))
    return jax.tree.map(leaf, state)


def _encode(value: Any, path: str) -> Any:
    """JSON-ready copy of a loop-state value; numpy values and tuples become tagged dicts."""
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        return {"__numpy__": {"dtype": arr.dtype.str, "shape": list(arr.shape),
                              "data": arr.ravel().tolist(), "scalar": isinstance(value, np.generic)}}
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"loop_state{path}: keys must be strings, got {bad[0]!r}")
        return {k: _encode(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"loop_state{path}: unsupported type {type(value).__name__}; use python "
                    "scalars, strings, lists, dicts or numpy arrays (jax keys: jax.random.key_data)")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__numpy__" in value:
            spec = value["__numpy__"]
            arr = np.array(spec["data"], dtype=np.dtype(spec["dtype"])).reshape(spec["shape"])
            return arr[()] if spec["scalar"] else arr
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        return {k: _decode(v) for k, v in value.items()}
    return value


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    if not prefix and "domain" not in flat:
        flat["domain"] = "atari" if "game" in flat else "dmc" if "task" in flat else _MISSING
    return flat


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointMismatch` if ``saved`` and ``current`` configs differ in a
    :data:`COMPATIBILITY_KEYS` field (the domain is inferred from ``game`` / ``task``)."""
    a, b = _flatten(saved), _flatten(current)
    diffs = [f"{k}: checkpoint={a.get(k, _MISSING)!r} current={b.get(k, _MISSING)!r}"
             for k in COMPATIBILITY_KEYS
             if (k in a or k in b) and a.get(k, _MISSING) != b.get(k, _MISSING)]
    if diffs:
        raise CheckpointMismatch("checkpoint config differs from the current config in "
                                 + "; ".join(diffs))


def _check_shapes(restored: Any, target: Any, where: pathlib.Path) -> None:
    """Orbax restores the saved shapes even when the target's differ: insist on a fit.

    (Dtypes need no check: orbax casts to the target's dtype.)
    """
    paths = jax.tree_util.tree_flatten_with_path(target)[0]
    diffs = [f"{jax.tree_util.keystr(p)}: checkpoint shape {r.shape}, target shape {t.shape}"
             for (p, t), r in zip(paths, jax.tree.leaves(restored)) if r.shape != t.shape]
    if diffs:
        raise CheckpointMismatch(f"state in {where} does not fit the target: " + "; ".join(diffs))


# --------------------------------------------------------------------------- public API

def latest_step(ckpt_dir: str | pathlib.Path) -> int | None:
    """The newest complete checkpoint step in ``ckpt_dir``, or None if there is none."""
    path = pathlib.Path(ckpt_dir).resolve()
    if not path.is_dir():
        return None
    with _manager(path) as mngr:
        return mngr.latest_step()


def save(ckpt_dir: str | pathlib.Path, step: int, state: Any, replay_state: Mapping[str, Any],
         loop_state: Mapping[str, Any], config_dict: Mapping[str, Any], keep: int = 2) -> pathlib.Path:
    """Write checkpoint ``step`` and keep only the newest ``keep`` steps.

    Args:
      ckpt_dir: directory holding the step directories (created if needed).
      step: agent step of the checkpoint. A step that is already saved is left as it is.
      state: agent state pytree (jax or numpy leaves, raw or typed PRNG keys), unreplicated.
      replay_state: non-empty nested dict of numpy arrays (0-d arrays for counters).
      loop_state: JSON-like dict; numpy arrays/scalars and tuples round-trip exactly.
      config_dict: the run's ``config.to_dict(cfg)``.
      keep: number of most recent checkpoints kept.

    Returns:
      The step directory.
    """
    if not replay_state:
        raise ValueError("replay_state is empty; pass the replay buffer's arrays")
    path = pathlib.Path(ckpt_dir).resolve()
    from mlr_jax import __version__

    loop = {**dict(loop_state), FORMAT_KEY: FORMAT, VERSION_KEY: __version__}
    with _manager(path, keep) as mngr:
        saved = mngr.all_steps()
        if step in saved:
            return path / str(step)
        host_state = _state_to_host(state)
        need = _bytes_needed(path, saved, host_state, replay_state)
        free = shutil.disk_usage(path).free
        if free < need:
            raise _disk_full(path, step, need, free, saved, "not enough free space")
        try:
            with _stderr_held_back():  # a full disk makes tensorstore print dozens of tracebacks
                mngr.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(host_state),
                    replay=ocp.args.StandardSave(dict(replay_state)),
                    loop=ocp.args.JsonSave(_encode(loop, "")),
                    config=ocp.args.JsonSave(dict(config_dict))))
        except Exception as e:
            if not _is_disk_full(e):
                raise
            for tmp in path.glob(f"{step}.orbax-checkpoint-tmp*"):  # give the space back
                shutil.rmtree(tmp, ignore_errors=True)
            raise _disk_full(path, step, need, shutil.disk_usage(path).free, saved,
                             "No space left on device") from None
    return path / str(step)


def _dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _bytes_needed(path: pathlib.Path, saved: Sequence[int], state: Any,
                  replay_state: Mapping[str, Any]) -> int:
    """Disk space a new checkpoint will take: the newest saved one's size plus the growth
    of the replay since (its arrays are compressed, so the raw size would overstate it), or
    for the first checkpoint the arrays' raw size."""
    if saved:
        return _dir_bytes(path / str(max(saved)))
    leaves = jax.tree.leaves(state) + jax.tree.leaves(dict(replay_state))
    return sum(int(np.asarray(x).nbytes) for x in leaves)


def _is_disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` or an exception it was raised from reports ENOSPC (orbax and tensorstore
    wrap the OSError, sometimes only as text)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _disk_full(path: pathlib.Path, step: int, need: int, free: int, saved: Sequence[int],
               cause: str) -> DiskFull:
    kept = (f"checkpoint {max(saved)} is intact" if saved else "no earlier checkpoint exists")
    return DiskFull(f"disk full: checkpoint {step} cannot be written to {path} ({cause}): it "
                    f"needs about {format_bytes(need)}, {format_bytes(free)} free; {kept}. Free "
                    "some space and --resume the run")


def restore(ckpt_dir: str | pathlib.Path, target_state: Any,
            config_dict: Mapping[str, Any] | None = None, step: int | None = None,
            with_replay: bool = True, on_skip: Callable[[str], None] | None = None
            ) -> tuple[Any, dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`save`.

    Args:
      ckpt_dir: the directory given to :func:`save`.
      target_state: a state pytree of the current run (e.g. ``agent.init(key)``), giving the
        structure, shapes, dtypes and PRNG key types to restore into. With typed keys it
        must hold concrete arrays; otherwise ``jax.ShapeDtypeStruct`` leaves also work.
      config_dict: the current run's config dict; if given, the checkpoint must agree with
        it on :data:`COMPATIBILITY_KEYS` (else :class:`CheckpointMismatch`).
      step: which step to read; None = the newest readable one. A newer checkpoint that
        cannot be read (a file truncated or deleted) is moved aside to
        ``<ckpt_dir>.unreadable/<step>`` (by the primary process), never deleted, and the
        next older one is tried; ``on_skip`` gets one line per checkpoint skipped.
      with_replay: False skips the replay (e.g. to evaluate the agent), returned as None.
      on_skip: where to report a skipped checkpoint (e.g. the loop's ``log``).

    Returns:
      ``(state, replay_state, loop_state, saved_config)``: state as jax arrays shaped like
      ``target_state``, replay as numpy arrays; ``loop_state["step"]`` is the step read.
    """
    path = pathlib.Path(ckpt_dir).resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    with _manager(path) as mngr:
        saved_steps = sorted(mngr.all_steps())
        if not saved_steps:
            raise CheckpointError(f"no complete checkpoint in {path}")
        if step is not None:
            if step not in saved_steps:
                raise CheckpointError(f"no checkpoint of step {step}: {path / str(step)} does "
                                      f"not exist; saved steps: {saved_steps}")
            return _read_step(mngr, path, step, target_state, config_dict, with_replay)
        problems = []
        for candidate in reversed(saved_steps):
            try:
                return _read_step(mngr, path, candidate, target_state, config_dict, with_replay)
            except CheckpointMismatch:
                raise
            except CheckpointError as e:
                aside = _set_aside(path, candidate)
                problems.append(str(e))
                if on_skip is not None:
                    on_skip(f"[mlr-jax] skipped checkpoint {candidate}: {e}"
                            + (f"; moved to {aside}" if aside else ""))
    raise CheckpointError(f"no readable checkpoint in {path}: " + " | ".join(problems))


def check_resumable(ckpt_dir: str | pathlib.Path, config_dict: Mapping[str, Any]) -> None:
    """Refuse a resume early: raise :class:`CheckpointError` if ``ckpt_dir`` holds no complete
    checkpoint, :class:`CheckpointMismatch` if the newest one has another :data:`FORMAT` or
    differs from ``config_dict`` on :data:`COMPATIBILITY_KEYS`. Reads only the small JSON
    items (well under a second); a newest step too damaged to read is left to
    :func:`restore`, which falls back to an older one."""
    path = pathlib.Path(ckpt_dir).resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    with _manager(path) as mngr:
        saved_steps = mngr.all_steps()
        if not saved_steps:
            raise CheckpointError(f"no complete checkpoint in {path}")
        step = max(saved_steps)
        try:
            with _stderr_held_back():
                items = mngr.restore(step, args=ocp.args.Composite(
                    config=ocp.args.JsonRestore(), loop=ocp.args.JsonRestore()))
        except Exception:  # noqa: BLE001 - damaged: restore() reports it and falls back
            return
    _check_format(dict(items.loop), path / str(step))
    check_compatible(items.config, config_dict)


def _check_format(loop: dict[str, Any], where: pathlib.Path) -> dict[str, Any]:
    """``loop`` without the format keys :func:`save` adds, after checking the format
    (checkpoints from before the keys existed are format 1)."""
    from mlr_jax import __version__

    loop = dict(loop)
    found, version = loop.pop(FORMAT_KEY, 1), loop.pop(VERSION_KEY, "0.1.0 or earlier")
    if found != FORMAT:
        raise CheckpointMismatch(
            f"checkpoint {where} has format {found!r} (written by mlr-jax {version}); mlr-jax "
            f"{__version__} reads format {FORMAT}: resume it with the version that wrote it")
    return loop


def _set_aside(path: pathlib.Path, step: int) -> pathlib.Path | None:
    """Move the unreadable step directory out of orbax's sight (primary process only)."""
    if not parallel.is_primary():
        return None
    aside = path.with_name(path.name + ".unreadable") / str(step)
    if aside.exists():
        aside = aside.with_name(f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path / str(step)), str(aside))
    return aside


@contextlib.contextmanager
def _stderr_held_back(settle_s: float = 1.0):
    """Run the body with the process's stderr (fd 2) held in a temporary file, passed on
    when the body succeeds. When a read of a broken checkpoint fails, orbax closes its event
    loop while other reads are still in flight, and each late tensorstore callback prints a
    ``RuntimeError: Event loop is closed`` traceback (hundreds for one truncated file),
    burying the one line that says what happened: wait ``settle_s`` for them and drop what
    they printed (the raised error names the checkpoint and the cause)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except Exception:
            time.sleep(settle_s)
            raise
        else:
            sys.stderr.flush()
            held.seek(0)
            text = held.read()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    if text:
        os.write(2, text)


def _read_step(mngr: ocp.CheckpointManager, path: pathlib.Path, step: int, target_state: Any,
               config_dict: Mapping[str, Any] | None, with_replay: bool
               ) -> tuple[Any, dict[str, Any] | None, dict[str, Any], dict[str, Any]]:
    where = path / str(step)

    def read(**items):
        try:
            with _stderr_held_back():
                return mngr.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax/tensorstore raise many types for bad files
            raise CheckpointError(f"cannot read checkpoint {where} (missing or corrupt): "
                                  f"{type(e).__name__}: {str(e)[:300]}") from e

    saved_config = read(config=ocp.args.JsonRestore()).config
    if config_dict is not None:
        check_compatible(saved_config, config_dict)
    abstract = jax.tree.map(
        lambda x: jax.eval_shape(jax.random.key_data, x) if _is_typed_key(x)
        else jax.ShapeDtypeStruct(x.shape, x.dtype), target_state)
    replay = {"replay": ocp.args.StandardRestore()} if with_replay else {}
    items = read(state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore(), **replay)
    _check_shapes(items.state, abstract, where)
    state = jax.tree.map(
        lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_typed_key(t)
        else jnp.asarray(r), items.state, target_state)
    loop = _check_format(_decode(items.loop), where)
    return (state, dict(items.replay) if with_replay else None, loop, saved_config)
