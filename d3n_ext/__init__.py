"""D3N plug-in: diffusion features for a YOLOv5 teacher, joined to the core through `engine.plugins`.

`plugins.yaml` lists this package; importing it registers its YAML blocks (FeatureMapper, FreqFilter,
CrossFusion and the fusion baselines), its training tasks (the hybrid teacher, distillation) and the
plug-in that supplies a teacher's latents (`d3n_ext.plugin`). The core and the scripts never name it.
"""

from d3n_ext import feature_mapper, fusion, plugin  # noqa: F401  (registration happens on import)
