"""D3N plug-in: diffusion features for a YOLOv5 teacher, registered into the core's YAML block registry.

Importing this package registers its blocks (FeatureMapper, FreqFilter, CrossFusion and the fusion
baselines) so model YAMLs can name them; the core (`models/`, `utils/`) never imports it.
"""

from d3n_ext import feature_mapper, fusion  # noqa: F401  (register the FeatureMapper and fusion blocks)
