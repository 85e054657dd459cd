"""The fusion blocks of stage 2 (III-C), registered under their YAML names on import.

Importing this module makes `FreqFilter`, `CrossFusion`, `FuseConcat`, `FuseSum` and
`FuseWeightedSum` nameable in model YAMLs. `FUSION_VARIANTS` maps the ablation's `fusion=` names
(D3N-SPEC §4, Tables I–II) to the block and args a YAML fusion row takes.
"""

from __future__ import annotations

import torch.nn as nn

from d3n_ext.fusion.cross_fusion import TABLE_I_VARIANTS, CrossFusion, FusionSwitches
from d3n_ext.fusion.freq_filter import FreqFilter
from d3n_ext.fusion.baselines import FuseConcat, FuseSum, FuseWeightedSum

__all__ = ["FUSION_VARIANTS", "CrossFusion", "FreqFilter", "FuseConcat", "FuseSum", "FuseWeightedSum",
           "FusionSwitches", "collect_fusion_weights", "fusion_row"]

# fusion= name -> (block name, YAML args); the paper's mAP@0.5 on NEU-DET in the comments
FUSION_VARIANTS: dict[str, tuple[str, list]] = {
    **{v: ("CrossFusion", [v, 4]) for v in TABLE_I_VARIANTS},  # 77.2 76.3 76.7 78.2 78.6 79.0
    "concat1x1": ("FuseConcat", []),  # 77.6
    "sum": ("FuseSum", []),  # 77.4
    "wsum": ("FuseWeightedSum", []),  # 78.2
}


def fusion_row(fusion: str) -> tuple[str, list]:
    """(block name, args) of a fusion row for an ablation's `fusion=` name."""
    if fusion not in FUSION_VARIANTS:
        raise ValueError(f"fusion={fusion!r}: expected one of {', '.join(FUSION_VARIANTS)}")
    name, args = FUSION_VARIANTS[fusion]
    return name, list(args)


def collect_fusion_weights(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per fusion layer (keyed by its YAML index, else its module name) the branch weights (Fig. 11)."""
    return {str(getattr(m, "i", name)): m.fusion_weights() for name, m in model.named_modules()
            if isinstance(m, (CrossFusion, FuseConcat, FuseSum, FuseWeightedSum)) and m.fusion_weights()}
