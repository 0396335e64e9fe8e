"""Host-side (numpy) replay buffers: prioritized sequence replay for Atari, uniform
transition + sequence replay for DMC, both storing each frame once."""
from mlr_jax.replay.atari import AtariBatch, AtariReplay
from mlr_jax.replay.dmc import DMCReplay, SACBatch, SeqBatch
from mlr_jax.replay.sum_tree import SumTree

__all__ = ["AtariBatch", "AtariReplay", "DMCReplay", "SACBatch", "SeqBatch", "SumTree"]
