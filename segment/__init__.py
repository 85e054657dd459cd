"""Instance segmentation scripts (YOLOv5-seg): thin wrappers over the shared engine.

Run them as `python -m segment.<name>` from the repository root.
"""
