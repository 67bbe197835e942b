"""jacobian_field, the probe fields and the matrix-free spectra over several devices equal their one-device
values (4 forced CPU devices, in a subprocess)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    from geometry import jacobians, matfree, models, probe, spectra

    assert jax.device_count() == 4, jax.devices()
    model = models.MLP(2, 32, 3, activation="tanh", rngs=nnx.Rngs(0))
    normed = models.MLP(2, 32, 3, activation="gelu", norm="layernorm", residual=True, rngs=nnx.Rngs(1))
    points = np.random.default_rng(0).standard_normal((1001, 2)).astype(np.float32)
    one = jax.devices()[:1]

    # the same per-device chunks (1000 points: 4 x 250 in chunks of 125): bit for bit
    sharded = jacobians.jacobian_field(model, points[:1000], chunk_size=125)
    assert len(sharded.sharding.device_set) == 4, sharded.sharding
    np.testing.assert_array_equal(sharded, jacobians.jacobian_field(model, points[:1000], chunk_size=125, devices=one))

    # 1001 points are padded to 1004 and unpadded; other chunk shapes round differently (float32)
    sharded = jacobians.jacobian_field(model, points, chunk_size=100)
    assert sharded.shape == (1001, 32, 2)
    np.testing.assert_allclose(sharded, jacobians.jacobian_field(model, points, chunk_size=100, devices=one),
                               rtol=1e-5, atol=1e-6)

    # with LayerNorm XLA fuses differently per shape: equal to float32 rounding (entries ~1-10)
    np.testing.assert_allclose(jacobians.jacobian_field(normed, points[:1000], chunk_size=125),
                               jacobians.jacobian_field(normed, points[:1000], chunk_size=125, devices=one),
                               rtol=1e-5, atol=2e-5)

    # reductions and pytree outputs are sharded the same way
    values = jacobians.jacobian_field(model, points, reduce=spectra.singular_values)
    np.testing.assert_allclose(values, jacobians.jacobian_field(model, points, reduce=spectra.singular_values,
                                                                devices=one), rtol=1e-5, atol=1e-6)
    hidden = probe.input_jacobian_field(model, points[:1000], "layers/*")
    assert len(hidden) == 3 and all(h.shape == (1000, 32, 2) for h in hidden.values())
    np.testing.assert_allclose(hidden["layers/2"], jacobians.jacobian_field(model, points[:1000], devices=one),
                               rtol=1e-5, atol=1e-6)
    local = probe.local_jacobian_field(model, points[:1000], "layers/*")
    np.testing.assert_allclose(local["layers/1"], probe.local_jacobian_field(model, points[:1000], "layers/1",
                                                                             devices=one)["layers/1"],
                               rtol=1e-5, atol=1e-6)

    # matrix-free spectra: the start vector and probes, shared by all points, meet sharded points
    # (the bug this caught: their shard_map types disagreed with the points')
    top = matfree.singular_values(model.features, points[:1000], 2)
    np.testing.assert_allclose(top["values"], matfree.singular_values(model.features, points[:1000], 2,
                                                                      devices=one)["values"], rtol=1e-5, atol=1e-6)
    volume = matfree.log_volume(model.features, points[:1000], probes=4, steps=2)["values"]
    np.testing.assert_allclose(volume, matfree.log_volume(model.features, points[:1000], probes=4, steps=2,
                                                          devices=one)["values"], rtol=1e-5, atol=1e-5)
    print("ok")
""")


def test_four_devices_equal_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
