"""Bundled sample assets, and ``make_samples``, which regenerates the derived ones."""
