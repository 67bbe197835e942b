"""The spiral learned by tanh and by no activation, frame by frame, as a GIF and a slider page.

Command:  python -m experiments training_animation [--quick]
Writes:   figures/training_animation.{png,pdf,json,npz,gif,html}
Runtime:  ~1 min on 2 CPU cores (quick: ~15 s).

Two MLPs 2 → 32 ×4 → 2 (tanh, and none = identity) are trained full-batch with Adam on the
spiral. At each frame step the decision regions over the plane are drawn with the step
counter and the training accuracy. Training advances from frame to frame by resuming its
Orbax checkpoint with more steps (`geometry.training`), so each frame is the same run the
final network came from. The PNG shows the last frame and the accuracy curves; the GIF
and the self-contained HTML page (slider) show every frame.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from matplotlib import animation

from geometry import data, models, plotting, training


@dataclasses.dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ("tanh", "identity")
    width: int = 32
    depth: int = 4
    steps: int = 3000
    frames: int = 40
    learning_rate: float = 3e-3
    n_train: int = 1000
    grid: int = 120
    dpi: int = 60


QUICK = Config(steps=200, frames=5, n_train=300, grid=40)


def frame_steps(config: Config) -> list[int]:
    """0, then geometric spacing up to `steps` (learning changes fastest early)."""
    return [0] + sorted({int(s) for s in np.round(np.geomspace(1, config.steps, config.frames - 1))})


def run(config: Config, context) -> dict:
    x, y = data.make_dataset("spiral", config.n_train, noise=0.05, seed=context.seed)
    bounds = data.bounds_of(x)
    grid = jnp.asarray(data.grid(bounds, config.grid))
    steps = frame_steps(config)
    frames = {a: [] for a in config.activations}
    accuracy = {a: [] for a in config.activations}
    for activation in config.activations:
        directory = context.out_dir / ".checkpoints" / context.name / f"{activation}-seed{context.seed}"
        # frames advance one run by extending its checkpoint; a finished run's checkpoint is past
        # frame 0, so each invocation starts the run afresh (its checkpoints only chain the frames)
        shutil.rmtree(directory, ignore_errors=True)
        for step in context.progress(steps, f"{activation} frames"):
            model = models.MLP(2, config.width, depth=config.depth, out_features=2, activation=activation,
                               rngs=nnx.Rngs(context.seed))
            train_config = training.TrainConfig(steps=step, learning_rate=config.learning_rate,
                                                checkpoint_every=max(step, 1), log_every=max(step, 1), seed=context.seed)
            training.train(model, x, y, train_config, checkpoint_dir=directory, log=lambda line: None)
            logits = np.asarray(jax.vmap(model)(grid))
            frames[activation].append((logits[:, 1] > logits[:, 0]).reshape(config.grid, config.grid))
            accuracy[activation].append(training.accuracy(model, x, y))

    context.save_arrays(points=x, labels=y, **{f"frames_{a}": np.stack(frames[a]) for a in config.activations})
    return {"frame_steps": steps, "train_accuracy": accuracy,
            "final_train_accuracy": {a: accuracy[a][-1] for a in config.activations}}


def plot(numbers: dict, arrays: dict, config: Config) -> dict:
    """The GIF, the slider page and the last-frame figure, from the JSON and training_animation.npz."""
    steps, accuracy = numbers["frame_steps"], numbers["train_accuracy"]
    x, y = arrays["points"], arrays["labels"]
    bounds = data.bounds_of(x)
    frames = {a: arrays[f"frames_{a}"] for a in config.activations}  # (frames, grid, grid) bool each

    def draw(axes, index):
        for ax, activation in zip(axes, config.activations):
            ax.clear()
            ax.imshow(frames[activation][index], origin="lower", extent=bounds, cmap="coolwarm", alpha=0.35,
                      interpolation="nearest", vmin=0, vmax=1)
            ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=2, lw=0)
            name = "none" if activation == "identity" else activation
            ax.set_title(f"{name}: step {steps[index]}, train acc {accuracy[activation][index]:.3f}", fontsize=8,
                         color=plotting.color(activation))
            ax.set_xticks([])
            ax.set_yticks([])

    fig, axes = plt.subplots(1, len(config.activations), figsize=(3.2 * len(config.activations), 3.4))
    anim = animation.FuncAnimation(fig, lambda i: draw(axes, i), frames=len(steps))
    with plt.rc_context({"savefig.dpi": config.dpi, "animation.embed_limit": 5.0}), \
            tempfile.TemporaryDirectory() as scratch:  # the GIF writer needs a file
        html = plotting.animation_html(anim, "training_animation", fps=5, default_mode="once")
        anim.save(Path(scratch) / "animation.gif", writer=animation.PillowWriter(fps=5), dpi=config.dpi)
        gif = (Path(scratch) / "animation.gif").read_bytes()
    plt.close(fig)
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>training_animation</title></head><body><h3>"
            "Spiral, tanh vs no activation: decision regions during training (drag the slider)</h3>\n" + html
            + "\n</body></html>\n")

    fig = plt.figure(figsize=(10, 3.4))
    grid_spec = fig.add_gridspec(1, len(config.activations) + 1)
    draw([fig.add_subplot(grid_spec[0, i]) for i in range(len(config.activations))], len(steps) - 1)
    ax = fig.add_subplot(grid_spec[0, -1])
    for activation in config.activations:
        ax.plot(np.maximum(steps, 1), accuracy[activation], "-o", ms=2, color=plotting.color(activation),
                label="none" if activation == "identity" else activation)
    ax.set_xscale("log")
    ax.set_xlabel("training step (0 plotted at 1)")
    ax.set_ylabel("train accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return {".gif": gif, ".html": page, "": fig}
