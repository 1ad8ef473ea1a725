"""The reconstructor service ("resplat"): fits an asset's Gaussians to refined views."""
