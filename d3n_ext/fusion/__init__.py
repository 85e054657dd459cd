"""Stage 2 of D3N (III-C): the hybrid teacher's blocks (FeatureMapper, FreqFilter, CrossFusion and the
Table II baselines), binding a model YAML to a repository, the latent dataset and the teacher's task."""
