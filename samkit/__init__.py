"""samkit: the pack's library code (models, segmentation, painting, mask maths, fal protocol).

Nothing in this package imports ComfyUI; the node classes in ``nodes/`` are thin adapters
over it, and ``python -m samkit`` runs the same code on image files.
"""

__version__ = "0.1.0"
