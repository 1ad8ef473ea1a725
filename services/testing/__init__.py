"""Code for tests, samples and benchmarks only: no service imports it, and no image ships it.

- ``synthetic``: Gaussian objects with a known ground truth, and their drifted "generator outputs".
- ``random_models``: Stable Diffusion and MVDream model folders with random weights, in the real
  architectures, built offline.
- ``stores``: a store that counts what is read.
- ``format_bounds``: what each quantizing splat format may change, as assertions.
- ``webhooks``: a webhook receiver on loopback.
- ``postgres``: a real PostgreSQL server in a folder of its own (also ``tire up --postgres``'s).
"""
