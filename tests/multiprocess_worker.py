"""One process of the multi-process tests (tests/test_multiprocess.py).

``python multiprocess_worker.py MODE PORT NUM_PROCESSES PROCESS_ID OUT`` joins a CPU
multi-process run, then

* ``update``: takes two data-parallel Atari updates of :func:`setup`'s state on
  :func:`setup`'s batch and writes the resulting parameters, priorities and losses to OUT
  (.npz);
* ``diverge``: checks a value that differs between the processes and writes the error
  message to OUT (text).
"""
import pathlib
import sys

import jax
import numpy as np

from mlr_jax import parallel
from mlr_jax.agents.atari import make_agent
from mlr_jax.agents.atari_aux import window
from mlr_jax.config import make_config
from mlr_jax.replay.atari import AtariBatch
import one_run

NUM_ACTIONS = 3


def setup():
    """Smoke Atari agent with SPR (per-sample augmentation and BatchNorm statistics over the
    global batch, so the device and process layout matters; its update compiles in a fraction
    of MLR's time), its initial state and a random batch of 4 sequences."""
    cfg = make_config("atari", "pong", "smoke", {"n_step": 3, "hidden_size": 32, "aux": "spr",
                                                  "spr.jumps": 3})
    agent = make_agent(cfg, NUM_ACTIONS)
    rng = np.random.default_rng(3)
    b, length, size = cfg.batch_size, max(window(cfg), cfg.n_step + 1), cfg.image_size
    batch = AtariBatch(
        obs=rng.integers(0, 256, (b, length, cfg.frame_stack, size, size), dtype=np.uint8),
        actions=rng.integers(0, NUM_ACTIONS, (b, length)).astype(np.int32),
        returns=rng.uniform(-2, 2, b).astype(np.float32),
        discounts=np.full(b, cfg.gamma ** cfg.n_step, np.float32),
        weights=rng.uniform(0.3, 1.0, b).astype(np.float32),
        indices=np.arange(b, dtype=np.int64),
        first_done=np.array([length, 2, length, 1][:b], np.int32))
    return agent, agent.init(jax.random.PRNGKey(0)), batch


def two_updates(step, state, batch) -> dict[str, np.ndarray]:
    """Flat results of two ``step`` calls (a :func:`one_run.data_parallel` step)."""
    out = {}
    for i in range(2):
        state, metrics = step(state, batch, jax.random.PRNGKey(10 + i))
        out[f"priorities{i}"] = np.asarray(metrics["priorities"])
        out[f"loss{i}"] = np.asarray(metrics["loss"])
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    out.update({jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
    return out


def main(mode: str, port: str, num_processes: str, process_id: str, out: str) -> None:
    parallel.initialize_distributed(f"localhost:{port}", int(num_processes), int(process_id))
    if mode == "update":
        agent, state, batch = setup()
        np.savez(out, **two_updates(one_run.data_parallel(agent.train_step), state, batch))
    elif mode == "diverge":
        try:
            parallel.check_same_across_processes({"step": 7, "score": float(process_id)}, "the test")
        except parallel.ProcessesDiverged as e:
            pathlib.Path(out).write_text(str(e))
    else:
        raise ValueError(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
