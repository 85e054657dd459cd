"""D3N plug-in: diffusion features for a YOLOv5 teacher, registered into the core's YAML block registry.

One folder per stage of the paper: `stage1/` (DDPM, features, ResVAE, latent repository), `fusion/`
(the teacher's blocks and its training task), `distill.py` (the student), `experiments/` (pipeline,
ablation, probe, tables). Importing this package registers the fusion blocks (FeatureMapper,
FreqFilter, CrossFusion and the Table II baselines) so model YAMLs can name them; the core
(`models/`, `utils/`) never imports it.
"""

# registered in the paper's order (Fig. 5, Fig. 4, Fig. 6, Table II), which the ablation's lists follow
from d3n_ext.fusion import feature_mapper, freq_filter, cross_fusion, baselines  # noqa: F401
