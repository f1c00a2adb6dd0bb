"""Sparse-view CT, CS-MRI and MRI z-axis super-resolution with two perpendicular 2D diffusion priors (TPDM).

Modules: ``phantoms`` (3D training/test volumes), ``config``, ``model`` (prior
pair, denoisers), ``data`` (2D slices along two planes), ``train`` (TASK),
``tpdm`` (the TPDM sampler), ``fast`` (DDS-style fast solver), ``run`` (jobs),
``evaluate``.
"""
