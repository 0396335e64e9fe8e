"""Predictive latent decoder against an independent numpy transformer, layouts, init, dtype."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.nets.decoder import PredictiveLatentDecoder, TransformerBlock, linear_init, sinusoidal_embedding

_erf = np.vectorize(math.erf)


def _np_position_table(length, dim):
    """pos / 10000^(2 * (j // 2) / dim): sin on even j, cos on odd j (per-element form)."""
    angles = np.array([[p / np.power(10000.0, 2 * (j // 2) / dim) for j in range(dim)] for p in range(length)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return angles


def _np_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _np_block(x, p, heads):
    batch, tokens, dim = x.shape
    hd = dim // heads
    h = _np_layer_norm(x, p["norm1"])
    qkv = (h @ p["attn"]["qkv"]["kernel"]).reshape(batch, tokens, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv  # [B, heads, N, hd]
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
    x = x + attn @ p["attn"]["proj"]["kernel"] + p["attn"]["proj"]["bias"]
    h = _np_layer_norm(x, p["norm2"]) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
    return x + h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def _np_decoder(params, states, actions, layout, num_layers, heads):
    batch, seq_len, dim = states.shape
    pos = _np_position_table(seq_len, dim)
    s, a = states + pos, actions + pos
    if layout == "states_then_actions":
        x = np.concatenate([s, a], axis=1)
    else:
        x = np.empty((batch, 2 * seq_len, dim))
        x[:, 0::2], x[:, 1::2] = s, a
    for i in range(num_layers):
        x = _np_block(x, params[f"block_{i}"], heads)
    return x[:, :seq_len] if layout == "states_then_actions" else x[:, 0::2]


def _tokens(batch=2, seq_len=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, seq_len, dim)).astype(np.float32),
            rng.normal(size=(batch, seq_len, dim)).astype(np.float32))


def _init(model, states, actions, seed=0):
    return jax.jit(model.init)(jax.random.key(seed), jnp.asarray(states), jnp.asarray(actions))["params"]


def _apply(model, params, states, actions):
    return jax.jit(model.apply)({"params": params}, jnp.asarray(states), jnp.asarray(actions))


def _param_shapes(model, tokens_shape):
    tokens = jax.ShapeDtypeStruct(tokens_shape, jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"]


@pytest.mark.parametrize("length,dim", [(16, 50), (16, 3136), (3, 2)])
def test_sinusoidal_embedding_matches_numpy(length, dim):
    table = sinusoidal_embedding(length, dim)
    chex.assert_shape(table, (length, dim))
    chex.assert_type(table, jnp.float32)
    np.testing.assert_allclose(np.asarray(table), _np_position_table(length, dim), atol=2e-5)


def test_sinusoidal_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match="dim=7"):
        sinusoidal_embedding(4, 7)


@pytest.mark.parametrize("layout", ["states_then_actions", "interleaved"])
@pytest.mark.parametrize("init", ["torch_default", "trunc_normal"])
def test_matches_numpy_reference(layout, init):
    states, actions = _tokens(dim=16)
    model = PredictiveLatentDecoder(dim=16, num_layers=2, num_heads=2, layout=layout, init_scheme=init)
    params = _init(model, states, actions)
    out = _apply(model, params, jnp.asarray(states), jnp.asarray(actions))
    chex.assert_shape(out, states.shape)
    chex.assert_type(out, jnp.float32)
    np_params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    expected = _np_decoder(np_params, states, actions, layout, 2, 2)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", [1e-3, 3.0])
def test_block_matches_numpy_reference_at_small_and_large_scale(scale):
    # Small inputs make the LayerNorm eps (1e-5, not flax's 1e-6) visible; large ones the
    # exact-erf GELU (not the tanh approximation).
    x = scale * _tokens(batch=2, seq_len=5, dim=16, seed=3)[0]
    block = TransformerBlock(dim=16, num_heads=2)
    params = jax.jit(block.init)(jax.random.key(1), x)["params"]
    out = jax.jit(block.apply)({"params": params}, x)
    np_params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    expected = _np_block(x.astype(np.float64), np_params, 2)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


def test_layouts_compute_the_same_function():
    states, actions = _tokens(dim=16, seq_len=5)
    atari = PredictiveLatentDecoder(dim=16, layout="states_then_actions")
    dmc = PredictiveLatentDecoder(dim=16, layout="interleaved")
    params = _init(atari, states, actions)
    a = _apply(atari, params, states, actions)
    b = _apply(dmc, params, states, actions)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["states_then_actions", "interleaved"])
def test_attends_across_time_and_to_actions(layout):
    states, actions = _tokens(seq_len=6, dim=16, seed=1)
    model = PredictiveLatentDecoder(dim=16, layout=layout)
    params = _init(model, states, actions)
    run = jax.jit(lambda s, a: _apply(model, params, s, a))
    base = np.asarray(run(states, actions))
    j = 2
    bump = np.random.default_rng(2).normal(size=16).astype(np.float32)  # not constant: LN removes shifts
    states2 = states.copy()
    states2[:, j] += bump
    changed = np.abs(np.asarray(run(states2, actions)) - base).max(axis=-1)  # [B, T]
    assert np.all(changed > 1e-4), changed  # every time step sees s_j
    actions2 = actions.copy()
    actions2[:, j] += bump
    changed = np.abs(np.asarray(run(states, actions2)) - base).max(axis=-1)
    assert np.all(changed > 1e-4), changed
    # Samples do not mix: perturbing sample 0 leaves sample 1 unchanged.
    states3 = states.copy()
    states3[0] += bump
    np.testing.assert_array_equal(np.asarray(run(states3, actions))[1], base[1])


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _expected_params(dim, layers, ratio):
    hidden = int(dim * ratio)
    attention = 3 * dim * dim + dim * dim + dim  # qkv (no bias) + proj (with bias)
    mlp = dim * hidden + hidden + hidden * dim + dim
    norms = 2 * 2 * dim
    return layers * (attention + mlp + norms)


@pytest.mark.parametrize("dim,layers,ratio", [(16, 1, 2.0), (32, 2, 2.0), (24, 3, 1.5)])
def test_param_count_formula(dim, layers, ratio):
    params = _param_shapes(PredictiveLatentDecoder(dim=dim, num_layers=layers, mlp_ratio=ratio), (1, 2, dim))
    assert _count(params) == _expected_params(dim, layers, ratio)
    jax.tree.map(lambda p: np.testing.assert_equal(p.dtype, jnp.float32), params)


def test_paper_size_atari_decoder_is_about_157m_params():
    shapes = _param_shapes(PredictiveLatentDecoder(dim=3136), (1, 16, 3136))
    assert _count(shapes) == _expected_params(3136, 2, 2.0) == 157_402_112


def test_init_schemes():
    states, actions = _tokens(dim=32, seq_len=2, batch=1)
    model = PredictiveLatentDecoder(dim=32, num_layers=1, init_scheme="torch_default")
    block = _init(model, states, actions)["block_0"]
    for name, fan_in in [("fc1", 32), ("fc2", 64)]:
        bound = 1 / math.sqrt(fan_in)
        for leaf in (block[name]["kernel"], block[name]["bias"]):
            leaf = np.asarray(leaf)
            assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.8 * bound
    kernel = np.asarray(block["attn"]["qkv"]["kernel"])
    np.testing.assert_allclose(kernel.std(), 1 / math.sqrt(3 * 32), rtol=0.1)  # uniform(+-b) std
    for norm in ("norm1", "norm2"):
        np.testing.assert_array_equal(np.asarray(block[norm]["scale"]), 1.0)
        np.testing.assert_array_equal(np.asarray(block[norm]["bias"]), 0.0)

    model = PredictiveLatentDecoder(dim=32, num_layers=1, init_scheme="trunc_normal")
    block = _init(model, states, actions)["block_0"]
    kernel = np.asarray(block["attn"]["qkv"]["kernel"])
    assert np.abs(kernel).max() <= 0.02
    np.testing.assert_allclose(kernel.std(), 0.02 * 0.5396, rtol=0.1)  # N(0,1) truncated at +-1
    for name in ("fc1", "fc2"):
        np.testing.assert_array_equal(np.asarray(block[name]["bias"]), 0.0)
    np.testing.assert_array_equal(np.asarray(block["attn"]["proj"]["bias"]), 0.0)


def test_linear_init_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="xavier"):
        linear_init("xavier", 4)


def test_bfloat16_compute_keeps_float32_params_and_output():
    states, actions = _tokens(dim=16, seq_len=4)
    f32 = PredictiveLatentDecoder(dim=16)
    bf16 = PredictiveLatentDecoder(dim=16, dtype=jnp.bfloat16)
    params = _init(bf16, states, actions)
    jax.tree.map(lambda p: chex.assert_type(p, jnp.float32), params)
    low = _apply(bf16, params, states, actions)
    chex.assert_type(low, jnp.float32)
    high = _apply(f32, params, states, actions)
    np.testing.assert_allclose(np.asarray(low), np.asarray(high), atol=0.1)
    assert not np.array_equal(np.asarray(low), np.asarray(high))


@pytest.mark.parametrize("kwargs,tokens_dim,match", [
    (dict(layout="causal"), 16, "causal"),
    (dict(num_heads=3), 16, "num_heads=3"),
    (dict(init_scheme="xavier"), 16, "xavier"),
    ({}, 8, "dim=16"),
])
def test_errors(kwargs, tokens_dim, match):
    states, actions = _tokens(dim=tokens_dim, seq_len=2, batch=1)
    with pytest.raises(ValueError, match=match):
        _init(PredictiveLatentDecoder(dim=16, **kwargs), states, actions)


def test_mismatched_token_shapes():
    states, _ = _tokens(dim=16, seq_len=3)
    _, actions = _tokens(dim=16, seq_len=2)
    with pytest.raises(AssertionError):
        _init(PredictiveLatentDecoder(dim=16), states, actions)
