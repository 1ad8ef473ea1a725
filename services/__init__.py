"""TIRE as services: one package per service, shared code in ``services.common``."""

import os

# numba's kernels and torch each run an OpenMP thread pool. With OpenMP's default active waiting, the
# threads of one pool spin on the cores while the other works: a process that renders with numba and
# then trains a LoRA with torch ran its LoRA steps 40x slower on 2 cores. Passive waiting costs neither
# (set here, before either pool starts; an explicit OMP_WAIT_POLICY wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
