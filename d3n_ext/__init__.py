"""D3N plug-in: diffusion features for a YOLOv5 teacher, joined to the core through `engine.plugins`.

One folder per stage of the paper: `stage1/` (DDPM, features, ResVAE, latent repository), `fusion/`
(the teacher's blocks, its training task and side inputs), `distill.py` (the student), `experiments/`
(pipeline, ablation, probe, tables). `plugin.py` is its one join with the core: `plugins.yaml` lists
this package, and importing it registers the fusion blocks (FeatureMapper, FreqFilter, CrossFusion and
the Table II baselines), the training tasks (hybrid teacher, distillation) and the plug-in that supplies
a teacher's latents. The core and its scripts never name it.
"""

# registered in the paper's order (Fig. 5, Fig. 4, Fig. 6, Table II), which the ablation's lists follow
from d3n_ext.fusion import feature_mapper, freq_filter, cross_fusion, baselines  # noqa: F401
from d3n_ext import plugin  # noqa: F401,E402  (tasks and the plug-in, after the blocks)
