"""Data: real sources, handwriting banks, the synthetic renderer, the demo stand-in, DataLoaders."""
