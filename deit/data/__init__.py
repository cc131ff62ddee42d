"""Datasets, transforms, samplers and the loader: plain Paddle/numpy/Pillow code."""
