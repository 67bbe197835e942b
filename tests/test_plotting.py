"""Animations embed as HTML with stable element ids: the same frames give the same bytes."""

import matplotlib.pyplot as plt
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
