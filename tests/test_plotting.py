"""Animations embed as HTML with stable element ids; maps kept for drawing keep what a figure shows."""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation

from geometry import plotting


def test_animation_html_is_deterministic():
    def page():
        fig, ax = plt.subplots(figsize=(1, 1))
        (line,) = ax.plot([0, 1], [0, 0])
        anim = animation.FuncAnimation(fig, lambda i: line.set_ydata([0, i]), frames=2)
        with plt.rc_context({"savefig.dpi": 20}):
            html = plotting.animation_html(anim, "demo", fps=2)
        plt.close(fig)
        return html

    first, second = page(), page()
    assert first == second
    assert "_anim_img" in first  # matplotlib's player, its random uuid replaced by a hash of the name


def test_quantised_maps_keep_the_colour_map_entry():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=5000) * 3, [np.inf, -np.inf, np.nan]])
    q = plotting.quantise(values)
    assert q["codes"].dtype == np.uint8 and (q["codes"][-3:] == 255).all()
    back = plotting.dequantise(q["codes"], q["low"], q["high"])
    assert np.isnan(back[-3:]).all()
    span = q["high"] - q["low"]
    np.testing.assert_allclose(back[:-3], values[:-3], rtol=0, atol=span / 255)  # within one level
    # the colour-map entry (256 over [low, high]) moves by at most one
    entry = lambda v: np.clip(np.floor((v - q["low"]) / span * 256), 0, 255)  # noqa: E731
    assert np.max(np.abs(entry(back[:-3]) - entry(values[:-3]))) <= 1


def test_contour_support_leaves_the_zero_contour_unchanged():
    import contourpy

    x, y = np.meshgrid(np.linspace(-2, 2, 80), np.linspace(-2, 2, 60))
    values = (np.sin(3 * x) * np.cos(2 * y) + 0.3 * x).astype(np.float32)
    kept = plotting.contour_support(values.ravel(), values.shape).reshape(values.shape)
    assert np.array_equal(kept > 0, values > 0)
    assert np.mean(np.abs(kept) == 1.0) > 0.5  # most of the map is now a constant
    lines = [contourpy.contour_generator(x, y, z).lines(0.0) for z in (values, kept)]
    assert len(lines[0]) == len(lines[1]) > 0
    for a, b in zip(lines[0], lines[1]):
        np.testing.assert_array_equal(a, b)
