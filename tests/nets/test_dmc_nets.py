"""DMC networks: CURL encoder layout, init, actor/critic heads, MLR re-initialisation."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.nets import dmc


def _reference_convs(params, obs, num_layers):
    """Independent NCHW reference: lax conv in NCHW/OIHW, ReLU, flatten in C,H,W order."""
    x = jnp.asarray(obs, jnp.float32) / 255.0
    for i in range(num_layers):
        kernel = jnp.transpose(params[f"conv{i}"]["kernel"], (3, 2, 0, 1))  # HWIO -> OIHW
        x = jax.lax.conv_general_dilated(x, kernel, (2, 2) if i == 0 else (1, 1), "VALID",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        x = jax.nn.relu(x + params[f"conv{i}"]["bias"][None, :, None, None])
    return np.asarray(x).reshape(x.shape[0], -1)


def test_conv_stack_matches_nchw_reference():
    convs = dmc.ConvStack(num_filters=4, num_layers=3)
    obs = np.random.default_rng(0).integers(0, 256, (2, 9, 21, 21), dtype=np.uint8)
    params = convs.init(jax.random.key(0), obs)["params"]
    # random biases so a wrong bias/flatten order cannot hide behind zeros
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape), params)
    out = convs.apply({"params": params}, obs)
    chex.assert_shape(out, (2, 4 * 6 * 6))  # 21 -> 10 (stride 2) -> 8 -> 6
    np.testing.assert_allclose(out, _reference_convs(params, obs, 3), rtol=1e-5, atol=1e-5)


def test_encoder_output_sizes_for_paper_and_smoke_shapes():
    obs = jax.ShapeDtypeStruct((1, 9, 84, 84), jnp.uint8)
    paper = jax.eval_shape(lambda x: dmc.ConvStack(64, 4).init_with_output(jax.random.key(0), x)[0], obs)
    assert paper.shape == (1, 64 * 35 * 35)  # CURL's OUT_DIM[4] = 35
    enc = dmc.PixelEncoder(feature_dim=50, num_filters=8, num_layers=2)
    out, variables = jax.eval_shape(lambda x: enc.init_with_output(jax.random.key(0), x), obs)
    assert out.shape == (1, 50)
    assert variables["params"]["head"]["fc"]["kernel"].shape == (8 * 39 * 39, 50)


def test_delta_orthogonal_init():
    kernel = dmc.delta_orthogonal()(jax.random.key(0), (3, 3, 9, 16))
    centre = np.asarray(kernel[1, 1])
    off_centre = np.asarray(kernel).copy()
    off_centre[1, 1] = 0.0
    np.testing.assert_array_equal(off_centre, 0.0)
    # [in=9, out=16]: orthonormal rows scaled by the ReLU gain sqrt(2)
    np.testing.assert_allclose(centre @ centre.T, 2.0 * np.eye(9), atol=1e-5)
    with pytest.raises(ValueError, match="square odd"):
        dmc.delta_orthogonal()(jax.random.key(0), (2, 2, 3, 3))


def test_encoder_layernorm_output_and_critic_from_conv():
    critic = dmc.Critic(feature_dim=6, num_filters=4, num_layers=2, hidden_dim=8)
    obs = np.random.default_rng(1).integers(0, 256, (3, 9, 16, 16), dtype=np.uint8)
    action = np.random.default_rng(2).uniform(-1, 1, (3, 2)).astype(np.float32)
    params = critic.init(jax.random.key(0), obs, action)["params"]
    assert set(params) == {"encoder", "q1", "q2"}
    q1, q2 = critic.apply({"params": params}, obs, action)
    chex.assert_shape([q1, q2], (3,))
    assert not np.allclose(q1, q2)  # two independent Q functions
    h = dmc.ConvStack(4, 2).apply({"params": params["encoder"]["convs"]}, obs)
    q1c, q2c = critic.apply({"params": params}, h, action, method=dmc.Critic.from_conv)
    np.testing.assert_allclose(q1c, q1, rtol=1e-6)
    np.testing.assert_allclose(q2c, q2, rtol=1e-6)
    feature = dmc.PixelEncoder(6, 4, 2).apply({"params": params["encoder"]}, obs)
    np.testing.assert_allclose(feature.mean(-1), 0.0, atol=1e-5)  # LayerNorm (1, 0), no tanh
    np.testing.assert_allclose(feature.std(-1), 1.0, atol=1e-2)


def test_actor_bounds_and_detached_conv_features():
    actor = dmc.Actor(action_dim=2, feature_dim=6, hidden_dim=8, log_std_min=-10.0, log_std_max=2.0)
    h = 10.0 * jax.random.normal(jax.random.key(0), (4, 20))
    params = actor.init(jax.random.key(1), h)["params"]
    assert set(params) == {"head", "trunk"}  # the actor owns no convolutions
    mean, log_std = actor.apply({"params": params}, h)
    chex.assert_shape([mean, log_std], (4, 2))
    assert np.all((log_std >= -10.0) & (log_std <= 2.0))
    grad_h = jax.grad(lambda x: jnp.sum(actor.apply({"params": params}, x)[0]))(h)
    np.testing.assert_array_equal(grad_h, 0.0)  # nothing flows back into the shared convs


def test_reinit_feature_head_and_mlr_mlp_init():
    enc = dmc.PixelEncoder(feature_dim=50, num_filters=4, num_layers=2)
    params = enc.init(jax.random.key(0), jnp.zeros((1, 9, 16, 16), jnp.uint8))["params"]
    params = jax.tree.map(lambda p: p + 1.0, params)  # a trained-looking encoder
    new = dmc.reinit_feature_head(jax.random.key(1), params)
    chex.assert_trees_all_equal(new["convs"], params["convs"])
    kernel = np.asarray(new["head"]["fc"]["kernel"])
    assert np.abs(kernel).max() <= 0.02 + 1e-7  # truncated at +-1 std
    # std of N(0, 0.02) truncated at +-1 std is 0.02 * 0.5396
    assert kernel.std() == pytest.approx(0.02 * 0.5396, rel=0.1)
    np.testing.assert_array_equal(new["head"]["fc"]["bias"], 0.0)
    np.testing.assert_array_equal(new["head"]["ln"]["scale"], 1.0)
    np.testing.assert_array_equal(new["head"]["ln"]["bias"], 0.0)

    mlp = dmc.MLP((100, 50), dmc.mlr_init)
    p = mlp.init(jax.random.key(2), jnp.zeros((1, 50)))["params"]
    assert set(p) == {"fc0", "fc1"} and p["fc0"]["kernel"].shape == (50, 100)
    assert max(float(jnp.abs(p[k]["kernel"]).max()) for k in p) <= 0.02 + 1e-7
