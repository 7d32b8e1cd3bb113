"""Benchmarks: each script measures rayrec next to a peer in the same run and prints ratios."""
