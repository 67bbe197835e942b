"""A live geometry playground in the browser: train a small net on 2-D data and watch its layers.

    python -m playground [--port P] [--no-browser]

`config` (what the page can ask for), `datasets`, `network` (the library's layers, one
kind per hidden layer), `views` (maps and per-layer numbers, read through
`geometry.probe`), `session` (the training thread), `export` (Orbax checkpoint + config
JSON), `warp` (the grid-and-disk widget) and `server` (HTTP, server-sent events).
"""
