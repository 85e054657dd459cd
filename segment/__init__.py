"""Instance segmentation scripts (YOLOv5-seg): thin wrappers over the shared engine, run as `python -m segment.<name>`."""
