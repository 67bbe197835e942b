"""Performance benchmarks (not tests): `python -m benchmarks.jacobians`, `.memory`, `.wide_layers`;
`python -m benchmarks.report` turns benchmarks/results/*.json into benchmarks/RESULTS.md."""
