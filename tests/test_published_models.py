"""Models written the way public NNX model zoos write them, analysed with no wrapper: call
arguments through `model_kwargs` (a keyword-only `rngs`, a KV cache module, segment ids),
token ids with `wrt=`, `nnx.scan`-stacked blocks, batch-first models and the errors a user
meets. Every field is compared with a hand-written jax.jacrev / jax.jacfwd reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geometry import batching, jacobians, matfree, probe


class TinyViT(nnx.Module):
    """Patch embedding, one pre-LN attention block with Dropout, a mean-pooled head;
    `__call__(x, *, rngs)` as image-transformer zoos write it. x: (8, 8, 1) image."""

    def __init__(self, rngs: nnx.Rngs, width: int = 8):
        self.patch = nnx.Conv(1, width, kernel_size=(4, 4), strides=(4, 4), rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=width, decode=False, rngs=rngs)
        self.dropout = nnx.Dropout(0.1)
        self.head = nnx.Linear(width, 3, rngs=rngs)

    def __call__(self, x, *, rngs: nnx.Rngs):
        tokens = self.patch(x).reshape(-1, self.patch.out_features)  # (4, width)
        tokens = tokens + self.dropout(self.attention(self.norm(tokens)), rngs=rngs)
        return self.head(tokens.mean(axis=0))


class KVCache(nnx.Module):
    """A decode cache passed to the model as an argument, written on every call."""

    def __init__(self, length: int, width: int):
        self.keys = nnx.Cache(jnp.zeros((length, width)))
        self.values = nnx.Cache(jnp.zeros((length, width)))


class CachedAttention(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)

    def __call__(self, h, *, cache: KVCache, segment_ids):  # h (T, width)
        q, k, v = jnp.split(self.qkv(h), 3, axis=-1)
        t = h.shape[0]
        cache.keys[...] = cache.keys[...].at[:t].set(k)  # what a decode step writes
        cache.values[...] = cache.values[...].at[:t].set(v)
        same = segment_ids[:, None] == segment_ids[None, :]
        causal = jnp.tril(jnp.ones((t, t), bool))
        scores = jnp.where(same & causal, q @ k.T / jnp.sqrt(1.0 * q.shape[-1]), -1e9)
        return h + jax.nn.softmax(scores, axis=-1) @ v


class TinyLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, vocab: int = 11, width: int = 6):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.attention = CachedAttention(width, rngs)
        self.unembed = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, tokens, *, cache: KVCache, segment_ids):
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"token ids must be integers, got {tokens.dtype}")
        return self.unembed(self.attention(self.embed(tokens), cache=cache, segment_ids=segment_ids))


class Block(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(width, width, rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)

    def __call__(self, x):
        return jax.nn.gelu(self.norm(self.linear(x)))


class ScanMLP(nnx.Module):
    """Blocks created with nnx.vmap and run with nnx.scan, as Flax's scan-over-layers example."""

    def __init__(self, width: int, depth: int, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(width, rngs)

        self.blocks = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, block):
            return block(x)

        return body(x, self.blocks)


class UnrolledMLP(nnx.Module):
    """The same network with its blocks in a list, weights copied from a ScanMLP."""

    def __init__(self, stacked: ScanMLP, depth: int, width: int):
        self.layers = nnx.List([Block(width, nnx.Rngs(0)) for _ in range(depth)])
        stacked_state = nnx.state(stacked.blocks)
        for i, layer in enumerate(self.layers):
            nnx.update(layer, jax.tree_util.tree_map(lambda a: a[i], stacked_state))

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _points(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_keyword_only_rngs_through_model_kwargs():
    model = TinyViT(nnx.Rngs(0))
    model.eval()
    rngs = nnx.Rngs(5)
    count = int(rngs.default.count[...])
    points = _points((3, 8, 8, 1))
    field = jacobians.jacobian_field(model, points, model_kwargs={"rngs": rngs})
    reference = np.stack([jax.jacrev(lambda x: model(x, rngs=nnx.Rngs(5)))(p) for p in points])
    np.testing.assert_allclose(field, reference, rtol=1e-5, atol=1e-6)
    assert int(rngs.default.count[...]) == count, "the caller's Rngs was changed"
    with pytest.raises(ValueError, match=r"needs argument\(s\) rngs: pass them with model_kwargs=\{'rngs'"):
        jacobians.jacobian_field(model, points)
    model.train()  # Dropout now draws from the rngs it is given: not one function
    with pytest.raises(jacobians.ModelStateError, match=r"model.eval\(\).*deterministic"):
        jacobians.jacobian_field(model, points, model_kwargs={"rngs": rngs})


def test_missing_argument_gets_no_batch_hint():
    model = TinyViT(nnx.Rngs(0))
    with pytest.raises(ValueError) as error:
        jacobians.jacobian_field(model, _points((2, 8, 8, 1)))
    assert "batched=True" not in str(error.value)


def _lm_reference(model, tokens, segment_ids, fresh_cache):
    """∂ logits / ∂ embeddings with the forward pass written out by hand."""
    def logits(embedded):
        cache = fresh_cache()
        return model.unembed(model.attention(embedded, cache=cache, segment_ids=segment_ids))

    return jax.jacrev(logits)(model.embed(tokens))


def test_token_ids_stay_integers_and_wrt_embeddings_matches_a_hand_written_pass():
    model = TinyLM(nnx.Rngs(1))
    cache = KVCache(4, 6)
    segment_ids = jnp.array([0, 0, 1, 1])
    tokens = np.array([[1, 2, 3, 4], [5, 0, 7, 10], [9, 9, 2, 1]], dtype=np.int32)
    kwargs = {"cache": cache, "segment_ids": segment_ids}
    assert probe.layers(model, tokens[0], model_kwargs=kwargs) == ["embed", "attention", "attention/qkv",
                                                                   "attention:softmax", "unembed"]
    field = probe.input_jacobian_field(model, tokens, ["attention", "unembed"], wrt="embed", model_kwargs=kwargs)
    assert field["unembed"].shape == (3, 4, 11, 4, 6)
    for i, t in enumerate(tokens):
        reference = _lm_reference(model, t, segment_ids, lambda: KVCache(4, 6))
        np.testing.assert_allclose(field["unembed"][i], reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cache.keys[...], 0.0)  # the caller's cache was never written
    # a local Jacobian of the attention block re-runs it from the cache it was called with
    local = probe.local_jacobian_field(model, tokens, "attention", model_kwargs=kwargs)
    for i, t in enumerate(tokens):
        block = jax.jacfwd(lambda h: model.attention(h, cache=KVCache(4, 6), segment_ids=segment_ids))(
            model.embed(t))
        np.testing.assert_allclose(local["attention"][i], block, rtol=1e-5, atol=1e-6)
    # new segment ids (array values) reuse the compiled function
    before = batching.mapped._cache_size()
    probe.input_jacobian_field(model, tokens, ["attention", "unembed"], wrt="embed",
                               model_kwargs={"cache": cache, "segment_ids": jnp.array([0, 1, 1, 1])})
    assert batching.mapped._cache_size() == before


def test_wrt_errors_name_the_layers():
    model = TinyLM(nnx.Rngs(1))
    kwargs = {"cache": KVCache(4, 6), "segment_ids": jnp.zeros(4, jnp.int32)}
    tokens = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match="wrt='nothing' must name one layer call.*valid paths: embed, attention, attention/qkv"):
        probe.input_jacobian_field(model, tokens, "unembed", wrt="nothing", model_kwargs=kwargs)
    with pytest.raises(ValueError, match="token ids.*wrt="):
        jacobians.jacobian_field(model, tokens.astype(np.float32), model_kwargs=kwargs)
    # integer points are never silently cast to float: every route that differentiates them refuses
    for differentiate in (lambda: jacobians.jacobian_field(model, tokens, model_kwargs=kwargs),
                          lambda: probe.input_jacobian_field(model, tokens, "unembed", model_kwargs=kwargs),
                          lambda: matfree.singular_values(model, tokens, 2, model_kwargs=kwargs)):
        with pytest.raises(ValueError, match=r"points are integers \(dtype int32\).*wrt='<embedding layer path>'"):
            differentiate()
    with pytest.raises(ValueError, match="wrt= names a layer of an nnx.Module"):
        jacobians.jacobian_field(lambda x: x, tokens, wrt="embed")


def test_jacobian_field_wrt_a_layer_of_a_module_is_the_logits_by_embedding_jacobian():
    model = TinyLM(nnx.Rngs(1))
    segment_ids = jnp.array([0, 0, 0, 1])
    kwargs = {"cache": KVCache(4, 6), "segment_ids": segment_ids}
    tokens = np.array([[1, 2, 3, 4], [5, 0, 7, 10]], dtype=np.int32)
    for mode in ("forward", "reverse", "auto"):
        field = jacobians.jacobian_field(model, tokens, wrt="embed", mode=mode, model_kwargs=kwargs)
        assert field.shape == (2, 4, 11, 4, 6)
        for i, t in enumerate(tokens):
            reference = _lm_reference(model, t, segment_ids, lambda: KVCache(4, 6))
            np.testing.assert_allclose(field[i], reference, rtol=1e-5, atol=1e-6)
    # by a deeper layer's output: logits = unembed(h), so the Jacobian is unembed's weight per token
    by_block = jacobians.jacobian_field(model, tokens, wrt="attention", as_matrix=True, model_kwargs=kwargs)
    expected = np.kron(np.eye(4), np.asarray(model.unembed.kernel[...]).T)  # (4·11, 4·6)
    np.testing.assert_allclose(by_block[0], expected, rtol=1e-6, atol=1e-7)


def test_scan_stacked_blocks_are_differentiable_and_listed_per_iteration():
    width, depth = 5, 3
    model = ScanMLP(width, depth, nnx.Rngs(2))
    unrolled = UnrolledMLP(model, depth, width)
    points = _points((4, width), seed=3)
    np.testing.assert_allclose(model(points[0]), unrolled(points[0]), rtol=1e-6)
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(jacobians.jacobian_field(model, points, mode=mode),
                                   jacobians.jacobian_field(unrolled, points, mode=mode), rtol=1e-5, atol=1e-6)
    keys = probe.layers(model, points[0])
    assert [k for k in keys if k.startswith("blocks@")] == [f"blocks@{i}" for i in range(depth)]
    assert "blocks/norm@2" in keys
    scanned = probe.input_jacobian_field(model, points, "blocks")
    reference = probe.input_jacobian_field(unrolled, points, "layers/*")
    local = probe.local_jacobian_field(model, points, "blocks/norm")
    local_reference = probe.local_jacobian_field(unrolled, points, "layers/*/norm")
    for i in range(depth):
        np.testing.assert_allclose(scanned[f"blocks@{i}"], reference[f"layers/{i}"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(local[f"blocks/norm@{i}"], local_reference[f"layers/{i}/norm"], rtol=1e-5,
                                   atol=1e-6)
    wrt = probe.input_jacobian_field(model, points, "blocks@2", wrt="blocks@0")
    by_hand = np.stack([jax.jacfwd(lambda h: unrolled.layers[2](unrolled.layers[1](h)))(unrolled.layers[0](p))
                        for p in points])
    np.testing.assert_allclose(wrt["blocks@2"], by_hand, rtol=1e-5, atol=1e-6)


def test_batched_is_accepted_by_every_entry_point():
    class BatchFirst(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(6, 4, rngs=rngs)

        def __call__(self, x):  # (B, 2, 3)
            return jnp.tanh(self.linear(x.reshape(x.shape[0], -1)))

    model = BatchFirst(nnx.Rngs(4))
    points = _points((3, 2, 3), seed=5)
    assert probe.layers(model, points[0], batched=True) == ["linear", "tanh"]  # the inline tanh, found
    dense = jacobians.jacobian_field(model, points, batched=True, as_matrix=True)
    top = matfree.singular_values(model, points, 2, batched=True)
    np.testing.assert_allclose(top["values"], np.linalg.svd(np.asarray(dense), compute_uv=False)[:, :2], rtol=1e-4)
    volume = matfree.log_volume(model, points, batched=True, probes=64, steps=4)
    exact = np.sum(np.log(np.linalg.svd(np.asarray(dense), compute_uv=False)), axis=1)
    np.testing.assert_allclose(volume["values"], exact, atol=5 * volume["standard_error"].max() + 1e-3)


@jax.custom_vjp
def _fused_yat(w, x):  # (k, n), (n,) -> (k,): (w·x)² / (‖w − x‖² + 1), with a hand-written backward rule
    return (w @ x) ** 2 / (jnp.sum((w - x[None, :]) ** 2, axis=-1) + 1.0)


def _fused_yat_forward(w, x):
    return _fused_yat(w, x), (w, x)


def _fused_yat_backward(residuals, g):
    w, x = residuals
    dot, distance = w @ x, jnp.sum((w - x[None, :]) ** 2, axis=-1) + 1.0
    # ∂/∂x of dot²/distance = 2 dot w / distance − dot² · 2 (x − w) / distance²
    d_dot = (2 * dot / distance)[:, None]
    d_distance = (-(dot ** 2) / distance ** 2)[:, None]
    d_x = d_dot * w + d_distance * 2 * (x[None, :] - w)
    d_w = d_dot * x[None, :] + d_distance * 2 * (w - x[None, :])
    return (g[:, None] * d_w, jnp.sum(g[:, None] * d_x, axis=0))


_fused_yat.defvjp(_fused_yat_forward, _fused_yat_backward)


class FusedYat(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (8, 3)))

    def __call__(self, x):
        return _fused_yat(self.w[...], x)


def test_custom_vjp_layers_fall_back_to_reverse_mode_and_forward_names_the_layer():
    model = FusedYat(nnx.Rngs(6))
    points = _points((4, 3), seed=7)  # 3 inputs, 8 outputs: auto picks forward mode
    reference = np.stack([jax.jacfwd(lambda x: (model.w[...] @ x) ** 2 / (jnp.sum((model.w[...] - x[None, :]) ** 2, -1) + 1))(p)
                          for p in points])
    with pytest.warns(jacobians.ForwardModeUnavailable, match="FusedYat.*custom_vjp.*reverse"):
        field = jacobians.jacobian_field(model, points)
    np.testing.assert_allclose(field, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mode='forward' cannot differentiate a layer of type FusedYat"):
        jacobians.jacobian_field(model, points, mode="forward")


@pytest.mark.parametrize("pairs", ["diagonal", "last_row"])
def test_per_token_blocks_equal_the_full_jacobians_blocks(pairs):
    model = TinyLM(nnx.Rngs(8))
    kwargs = {"cache": KVCache(4, 6), "segment_ids": jnp.zeros(4, jnp.int32)}
    tokens = np.array([[1, 2, 3, 4], [10, 0, 7, 5]], dtype=np.int32)
    full = probe.input_jacobian_field(model, tokens, "attention", wrt="embed", model_kwargs=kwargs)["attention"]
    blocks = probe.token_jacobians(model, tokens, "attention", wrt="embed", pairs=pairs, model_kwargs=kwargs)
    full = np.asarray(full)  # (N, T, d, T, d)
    expected = (np.stack([full[:, t, :, t, :] for t in range(4)], axis=1) if pairs == "diagonal"
                else np.stack([full[:, 3, :, s, :] for s in range(4)], axis=1))
    np.testing.assert_allclose(blocks, expected, rtol=1e-5, atol=1e-6)
    if pairs == "last_row":  # causal: the last token depends on every earlier one; the first only on itself
        assert np.abs(expected[:, :3]).max() > 1e-3 and np.abs(full[:, 0, :, 1:, :]).max() == 0


class ConvBlock(nnx.Module):
    """A ResNet-style block: conv, BatchNorm, ReLU, a skip, then Dropout (rngs given at construction)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(2, 2, kernel_size=(3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(2, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):  # (B, 4, 4, 2)
        return self.dropout(x + jax.nn.relu(self.norm(self.conv(x))))


def test_training_mode_is_refused_on_every_route_with_the_eval_hint():
    model = ConvBlock(nnx.Rngs(9))
    points = _points((2, 4, 4, 2), seed=10)
    routes = [lambda: jacobians.jacobian_field(model, points, batched=True),
              lambda: probe.input_jacobian_field(model, points, "norm", batched=True),
              lambda: probe.local_jacobian_field(model, points, "norm", batched=True),
              lambda: matfree.singular_values(model, points, 2, batched=True)]
    for route in routes:
        with pytest.raises(jacobians.ModelStateError, match=r"model.eval\(\)"):
            route()
    model.eval()
    local = probe.local_jacobian_field(model, points, "norm", batched=True)["norm"]  # (2, 4, 4, 2, 4, 4, 2)
    scale = model.norm.scale[...] / jnp.sqrt(model.norm.var[...] + model.norm.epsilon)
    expected = np.einsum("c,ij,kl,cd->ikcjld", np.asarray(scale), np.eye(4), np.eye(4), np.eye(2))
    np.testing.assert_allclose(local, np.broadcast_to(expected, local.shape), rtol=1e-5, atol=1e-7)


def test_dropout_without_rngs_in_training_mode_says_eval():
    class NoRngs(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 3, rngs=rngs)
            self.dropout = nnx.Dropout(0.5)

        def __call__(self, x):
            return self.dropout(self.linear(x))

    with pytest.raises(ValueError, match=r"model.eval\(\)") as error:
        jacobians.jacobian_field(NoRngs(nnx.Rngs(0)), _points((2, 3)))
    assert "batched=True" not in str(error.value)


class NormNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm = nnx.BatchNorm(4, rngs=rngs)
        self.layer_norm = nnx.LayerNorm(4, rngs=rngs)
        self.rms_norm = nnx.RMSNorm(4, rngs=rngs)

    def __call__(self, x):  # (B, 5, 5, 3)
        return self.rms_norm(jax.nn.gelu(self.layer_norm(self.batch_norm(self.conv(x)))))


def test_structured_local_spectra_equal_the_dense_svd():
    model = NormNet(nnx.Rngs(11))
    # statistics away from (0, 1) and a scale that is not 1, so the diagonal is not trivial
    model.batch_norm.mean[...] = jnp.linspace(-1.0, 1.0, 4)
    model.batch_norm.var[...] = jnp.linspace(0.5, 2.0, 4)
    model.layer_norm.scale[...] = jnp.linspace(0.5, 1.5, 4)
    model.eval()
    points = _points((3, 5, 5, 3), seed=12)
    layers = ["conv", "batch_norm", "layer_norm", "rms_norm"]
    spectra = probe.local_singular_values(model, points, layers, batched=True)
    assert [spectra[k]["structure"] for k in layers] == ["dense", "diagonal", "blocks", "blocks"]
    dense = probe.local_jacobian_field(model, points, layers, batched=True, as_matrix=True)
    for key in layers:
        expected = np.linalg.svd(np.asarray(dense[key], np.float64), compute_uv=False)
        np.testing.assert_allclose(spectra[key]["values"], expected[:, :spectra[key]["values"].shape[1]],
                                   rtol=2e-4, atol=1e-5, err_msg=key)
