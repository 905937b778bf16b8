"""Temporal coherence from the renderer's exact motion vectors (issue 9): flow decoding,
warping, validity masks and the warping-error metric (`flow`). numpy only."""
