"""MedDiffCore: the diffusion engine behind the MedDiffSlicer 3D Slicer extension.

Importing this package has no side effects: no device is chosen, no seed is set,
no model is loaded.
"""

__version__ = "0.1.0"
