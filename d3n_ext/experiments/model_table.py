"""`python -m models.yolo` for D3N YAMLs: the layer table, parameters and GFLOPs, with the plug-in's blocks registered.

    python -m d3n_ext.experiments.model_table --cfg yolov5s-d3n.yaml [--imgsz 512]

Unbound YAMLs build with the paper preset's sizes written in them (random decoders); GFLOPs count
zero latents on the stride grids, the decoders included.
"""

from __future__ import annotations

import d3n_ext  # noqa: F401  (registers FeatureMapper and the fusion blocks)
from models.yolo import build_parser, main  # noqa: F401  (build_parser: the flags, for tests)

if __name__ == "__main__":
    main()
