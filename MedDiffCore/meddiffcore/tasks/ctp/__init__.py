"""CTP Temporal Inpaint: fill a sparse 4D CT perfusion sequence to a fine (1 s) grid.

Modules: ``phantom`` (brain perfusion phantom with ground-truth maps),
``perfusion`` (block-circulant SVD deconvolution, AIF selection), ``sequences``
(readers for the input layouts), ``plan`` (which target times are known, missing
or bad, and their conditioning), ``config``/``model``/``data``/``train`` (the
network and its training), ``inpaint`` (the sampler over slabs and frames),
``run`` (job runners) and ``evaluate``.
"""
