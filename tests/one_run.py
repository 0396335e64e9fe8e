"""One run's data-parallel update through :class:`mlr_jax.parallel.Layout` (a group of one
seed), taking and giving an unstacked state: what the equivalence tests compare against a
plain call of the agent's ``train_step``."""
import jax
import numpy as np

from mlr_jax import parallel
from mlr_jax.agents.common import seed_axes


def raw_key(key):
    """``key``'s uint32 data (the loop's keys are raw; typed keys become theirs)."""
    if jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key)


def data_parallel(train_step, num_devices=None, axes=None, num_tables=0):
    """``step(state, batch, key, *tables) -> (state, metrics)`` for one run on the first
    ``num_devices`` devices (None: every device of every process): the state is stacked as a
    group of one, the batch split over the devices, and the results unstacked (host numpy).
    ``axes``: the state's seed axes (default :func:`mlr_jax.agents.common.seed_axes`)."""
    layout = parallel.layout(1, num_devices)
    built = {}

    def step(state, batch, key, *tables):
        state_axes = seed_axes(state) if axes is None else axes
        if "step" not in built:
            built["step"] = layout.train_step(train_step, state_axes, num_tables=num_tables,
                                              donate_state=False)
        stacked = layout.put(parallel.stack([jax.device_get(state)], state_axes), state_axes)
        tables = [layout.put_seeds(np.asarray(t)[None]) for t in tables]
        new, metrics = built["step"](stacked, jax.tree.map(lambda x: np.asarray(x)[None], batch),
                                     raw_key(key)[None], *tables)
        return (layout.unstack(new, state_axes)[0],
                jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(metrics)))

    step.layout = layout
    return step
