"""One experiment per figure family; run them with `python -m experiments [NAME ...] [--quick]`.

Each experiment module defines a frozen dataclass `Config` (the full run), `QUICK` (a
small variant for CI), `run(config, context) -> dict` returning every number its figure
shows (arrays the figure needs go to `context.save_arrays`, kept as NAME.npz), and
`plot(numbers, arrays, config) -> {suffix: figure, page or animation}` drawing from those
alone. The runner (`experiments._runner`) adds config, seed, versions, device and wall
time, calls `plot` with the numbers as the JSON holds them, and writes
figures/NAME.{png,pdf,json,npz} as a set; `python -m experiments plot NAME` redraws.
"""

# name -> module, in the order `all` runs them
EXPERIMENTS = {
    "activations": "experiments.activations",
    "linear_collapse": "experiments.linear_collapse",
    "grid_warp": "experiments.grid_warp",
    "dead_units": "experiments.dead_units",
    "rank_depth": "experiments.rank_depth",
    "saturation": "experiments.saturation",
    "pullback": "experiments.pullback",
    "injectivity": "experiments.injectivity",
    "dynamical_isometry": "experiments.dynamical_isometry",
    "spectral_universality": "experiments.spectral_universality",
    "tradeoff": "experiments.tradeoff",
    "fidelity": "experiments.fidelity",
    "similarity": "experiments.similarity",
    "failure_table": "experiments.failure_table",
    "training_animation": "experiments.training_animation",
    "vanishing_gradients": "experiments.vanishing_gradients",
    "kernel_layers": "experiments.kernel_layers",
    "yat_xor": "experiments.yat_xor",
    "linguistic_collapse": "experiments.linguistic_collapse",
    "digits": "experiments.digits",
    "attention_collapse": "experiments.attention_collapse",
    "linear_regions": "experiments.linear_regions",
    "terminal_phase": "experiments.terminal_phase",
    "ssl_collapse": "experiments.ssl_collapse",
}
