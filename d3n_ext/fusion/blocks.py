"""The plug-in's blocks, found through the core's block registry by the role each class declares.

A block tells the plug-in what it is with class attributes, so registering it (one class, one
decorator) is all a new block needs; nothing here or in binding, the ablation or the fusion log
names a block:

    d3n_role = "mapper"   decodes one repository level's latents (FeatureMapper). Binding asks it
                          `level_of(args)`, `bind_args(args, level)`, `side_input_channels(args)` and
                          `bound_fingerprint(args)`, then loads its frozen decoder (`load_decoder`).
    d3n_role = "filter"   works on a mapper's output on the DDPM grid (FreqFilter); binding rewrites
                          its args with `bind_args(args, level)`, the ablation swaps it for an identity.
    d3n_role = "fusion"   merges [X, Y] into a map shaped like X (subclasses of inputs.FusionBlock:
                          CrossFusion and Table II's baselines). `ablation_variants` are its names in the
                          ablation's `fusion=` (Tables I–II), `fusion_weights()` its branch weights (Fig. 11).
"""

from __future__ import annotations

import torch.nn as nn

from models.registry import BLOCKS

ROLES = ("mapper", "filter", "fusion")


def blocks_with_role(role: str) -> dict[str, type]:
    """YAML name -> class of every registered block declaring `d3n_role = role`, in registration order."""
    if role not in ROLES:
        raise ValueError(f"block role {role!r}: expected one of {ROLES}")
    return {name: e.cls for name, e in BLOCKS.items() if getattr(e.cls, "d3n_role", None) == role}


def row_block(row) -> type | None:
    """The registered class of a well-formed YAML row's module (malformed rows and unknown names: None,
    left for the parser to report)."""
    if not (isinstance(row, list) and len(row) == 4):
        return None
    entry = BLOCKS.get(str(row[2]))
    return entry.cls if entry else None


def row_role(row) -> str | None:
    """The `d3n_role` of a YAML row's block, None for the core's blocks."""
    return getattr(row_block(row), "d3n_role", None)


def modules_with_role(model: nn.Module, role: str) -> list[tuple[str, nn.Module]]:
    """(module name, module) of every block of a built model whose class declares `role`."""
    kinds = tuple(blocks_with_role(role).values())
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def fusion_variants() -> dict[str, str]:
    """The ablation's `fusion=` names -> the YAML name of the block each sets, over every fusion block."""
    variants: dict[str, str] = {}
    for name, cls in blocks_with_role("fusion").items():
        for variant in cls.ablation_variants:
            if variant in variants:
                raise ValueError(f"fusion={variant!r} is claimed by both {variants[variant]} and {name}; "
                                 "rename one of their ablation_variants")
            variants[variant] = name
    return variants


def fusion_row(fusion: str, kv_tokens: int | None = None) -> tuple[str, list]:
    """(block name, args) of a fusion row for an ablation's `fusion=` name; `kv_tokens` caps attention
    keys/values in blocks that have them (None: the block's default)."""
    variants = fusion_variants()
    if fusion not in variants:
        raise ValueError(f"fusion={fusion!r}: expected one of {', '.join(variants)}")
    name = variants[fusion]
    return name, BLOCKS[name].cls.ablation_args(fusion, kv_tokens)


def collect_fusion_weights(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per fusion layer (keyed by its YAML index, else its module name) the branch weights (Fig. 11)."""
    return {str(getattr(m, "i", name)): m.fusion_weights() for name, m in modules_with_role(model, "fusion")
            if m.fusion_weights()}
