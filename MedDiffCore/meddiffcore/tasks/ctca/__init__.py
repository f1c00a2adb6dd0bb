"""CTCA synthesis (seed 000): a coronary + heart label map in, a contrast-enhanced cardiac CT out.

Modules: ``labels`` (THE label table, mapping files), ``phantom`` (procedural
phantoms), ``prepare`` (ImageCAS + TotalSegmentator -> training folder),
``config`` (configs, the HU window), ``model`` (network, denoiser, conditioning),
``grid`` (model grids and resampling), ``patches`` (overlapping patches, seam-free
blending), ``data`` (datasets), ``train`` (the trainable task), ``synthesis``
and ``run`` (the synthesize job), ``evaluate`` (label adherence, diversity,
memorisation).
"""
