"""MedDiffSlicerLib: the Slicer side of MedDiff, without Qt.

Modules here know MRML (nodes, storage, sequences, plots, subject hierarchy)
and import no Qt (``panel`` drives the widgets a module panel hands it), and
they never import torch or the engine: models run in a separate engine process
(``PythonSlicer -m meddiffcore.worker JOB.json``) so a crash or an out-of-memory
error there cannot take Slicer down. Everything here runs headless with the
``slicer-core`` wheel, which is how it is tested.
"""
