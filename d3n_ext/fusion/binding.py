"""Binding a D3N model YAML to a feature repository: row args from the manifest, decoder weights from its files.

A D3N YAML (models/yolov5s-d3n.yaml) builds on its own with the paper preset's sizes, so its layer
table prints without a repository. Training binds it: `bind_repository` rewrites the mapper rows
(FeatureMapper), the SideInput rows they read and the filter rows (FreqFilter) that read them to the
repository's channels, timesteps, grids and decoder architecture (the YAML dict is what checkpoints
keep, so a teacher rebuilds from it alone), and `load_repository_weights` copies the frozen decoders
in. Rows are found by the role their block declares (blocks.py), each block rewriting its own args.
A SideInput row meets its repository level through the FeatureMapper that reads it. Its stride is the
grid the dataloader warps the latents to: the level's detector stride (8/16/32 = P3/P4/P5, the
default) or a divisor of it, a finer grid on which the decoder runs before fusion resizes to the
detector's (the DDPM's own grid, e.g. stride 4/8/16 for ddpm-cpu's 40/20/10 taps at 160 px).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import torch.nn as nn

from d3n_ext.fusion.blocks import blocks_with_role, modules_with_role, row_block, row_role
from d3n_ext.fusion.feature_mapper import LevelBinding, MapperSpec
from d3n_ext.stage1.checkpoints import load_compressors
from d3n_ext.stage1.config import load_stage1_config
from d3n_ext.stage1.repository import LatentRepository
from models.common import SideInput
from models.yolo import ModelConfigError
from utils.checkpoints import CheckpointError, load_checkpoint

LOGGER = logging.getLogger(__name__)


def repository_fingerprint(repo: LatentRepository) -> str:
    """16 hex digits naming what fixes a repository's latents: weights, timesteps, noise rule, kind.

    Two repositories built from the same stage-1 weights (say, train images now, new images later)
    share it; a teacher trained on one reads the other correctly.
    """
    m = repo.manifest
    features = {k: v for k, v in (m.get("features") or {}).items() if k in ("noise", "noise_seed")}
    parts = {"kind": repo.kind, "compressor": m.get("compressor"), "timesteps": repo.timesteps, "features": features,
             "weights": {k: v.get("sha256") for k, v in (m.get("weights") or {}).items()}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def decoder_specs(repo: LatentRepository) -> list[MapperSpec]:
    """Per level the FeatureMapper args that rebuild the repository's decoder (config only, no weights built)."""
    n_t, fp = len(repo.timesteps), repository_fingerprint(repo)
    if repo.kind == "raw":
        return [MapperSpec(i, n_t, lv.channels_feature, lv.channels_feature, 0, 0, "raw", fingerprint=fp)
                for i, lv in enumerate(repo.levels)]
    path = repo.weight_file("compressor")
    ckpt = load_checkpoint(path)
    specs = []
    try:
        for i, (lv, entry) in enumerate(zip(repo.levels, ckpt["levels"], strict=True)):
            cfg = entry["config"]
            if ckpt["kind"] == "resvae":
                width, blocks = int(cfg.get("hidden_channels") or cfg["in_channels"]), int(cfg["num_blocks"])
            else:
                width, blocks = 0, 0
            specs.append(MapperSpec(i, n_t, lv.channels_latent, lv.channels_feature, width, blocks, ckpt["kind"],
                                    fingerprint=fp))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: compressor levels do not match {repo.root}'s manifest ({e})") from None
    return specs


def yaml_rows(cfg: dict) -> list[tuple[str, int, list]]:
    return [(section, j, r) for section in ("backbone", "head") for j, r in enumerate(cfg[section])]


def is_side_input(row) -> bool:
    """Whether a YAML row is one of the core's SideInput rows (the model's extra inputs)."""
    cls = row_block(row)
    return cls is not None and issubclass(cls, SideInput)


def _single_from(row: list, i: int) -> int | None:
    f = row[0]
    if isinstance(f, int) and not isinstance(f, bool):
        return i + f if f < 0 else f
    return None


def repository_levels(repo: LatentRepository) -> list[LevelBinding]:
    return [LevelBinding(spec, lv.stride_hint, tuple(lv.hw)) for spec, lv in zip(decoder_specs(repo), repo.levels)]


def preset_levels(preset: str | Path = "ddpm-tiny") -> list[LevelBinding]:
    """The levels a stage-1 preset would produce (no repository needed: benchmarks, layer tables)."""
    cfg = load_stage1_config(preset)
    n_t, v = len(cfg.features.timesteps), cfg.vae
    return [LevelBinding(MapperSpec(i, n_t, v.latent_channels, c, v.hidden_channels or c, v.num_blocks), 8 << i, (h, w))
            for i, (c, h, w) in enumerate(cfg.unet.tap_shapes())]


def bind_repository(cfg: dict, repo: LatentRepository) -> dict:
    """A copy of the model YAML dict with its D3N rows sized for `repo` (errors name the YAML row and repository)."""
    return bind_levels(cfg, repository_levels(repo), f"the repository {repo.root}")


def bind_levels(cfg: dict, levels: list[LevelBinding], what: str) -> dict:
    """A copy of the model YAML dict whose mapper rows, their SideInputs and their filters read `levels`."""
    cfg, source = copy.deepcopy(cfg), cfg.get("yaml_file", "<dict>")
    rows = yaml_rows(cfg)
    mappers = [i for i, (_, _, r) in enumerate(rows) if row_role(r) == "mapper"]
    if not mappers:
        raise ModelConfigError(f"{source}: no {'/'.join(blocks_with_role('mapper'))} rows, so nothing reads "
                               f"{what}; use a D3N model YAML such as yolov5s-d3n.yaml")
    for i in mappers:
        section, j, row = rows[i]
        mapper, where = row_block(row), f"{source}: {section} row {j} (layer {i}) {row[2]}"
        args = list(row[3]) if isinstance(row[3], list) else [row[3]]
        level = mapper.level_of(args)
        if not isinstance(level, int) or not 0 <= level < len(levels):
            raise ModelConfigError(f"{where} asks for level {level!r}, but {what} has {len(levels)} levels "
                                   f"(0..{len(levels) - 1} = P3, P4, P5)")
        bound = levels[level]
        row[3] = mapper.bind_args(args, bound)
        src = _single_from(row, i)
        if src is None or not 0 <= src < i or not is_side_input(rows[src][2]):
            raise ModelConfigError(f"{where} must read a SideInput row (its 'from' names layer {src})")
        side = rows[src][2]
        side[3] = [side[3][0], mapper.side_input_channels(row[3]), _grid_stride(side[3], bound.stride, where)]
        for k, (_, _, other) in enumerate(rows):
            if k > i and row_role(other) == "filter" and _single_from(other, k) == i:
                other[3] = row_block(other).bind_args(other[3], bound)
    return cfg


def _grid_stride(side_args: list, level_stride: int, where: str) -> int:
    """The SideInput's stride kept when it divides the level's (a finer grid), else the level's own."""
    stride = side_args[2] if len(side_args) > 2 else level_stride
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1 or level_stride % stride:
        raise ModelConfigError(f"{where} reads a SideInput of stride {stride!r}; it must divide the level's "
                               f"stride {level_stride} (the detector grid, or a finer one such as the DDPM's own)")
    return stride


def load_repository_weights(model: nn.Module, repo: LatentRepository) -> nn.Module:
    """Copy the repository's frozen decoders and feature statistics into the model's mappers (FeatureMapper)."""
    fp = repository_fingerprint(repo)
    mappers = [m for _, m in modules_with_role(model, "mapper")]
    for m in mappers:
        if m.spec.fingerprint != fp:
            raise ValueError(f"{repo.root}: layer {getattr(m, 'i', '?')} {type(m).__name__} was bound to a repository "
                             f"with fingerprint {m.spec.fingerprint or '(none)'}, this one has {fp}; bind the YAML to it")
    if repo.kind == "raw" or not mappers:
        return model
    _, compressors, _ = load_compressors(repo.weight_file("compressor"))
    for m in mappers:
        comp = compressors[m.spec.level]
        m.load_decoder(comp.module.decoder.state_dict(), comp.mean, comp.std)
    return model


def check_bound_to(model_yaml: dict, repo: LatentRepository, source: str) -> None:
    """Refuse a repository whose latents the model's decoders were not trained on (other stage-1 weights)."""
    fp = repository_fingerprint(repo)
    for i, (_, _, row) in enumerate(yaml_rows(model_yaml)):
        if row_role(row) != "mapper":
            continue
        bound = row_block(row).bound_fingerprint(row[3])
        if not bound:
            LOGGER.warning("%s: layer %d %s was never bound to a repository (random decoder)", source, i, row[2])
        elif bound != fp:
            raise ValueError(f"{source}: trained on latents of a repository with fingerprint {bound}, but {repo.root} "
                             f"has {fp} (other DDPM/VAE weights or timesteps); pass the repository it was trained with")


def side_inputs_of_yaml(model_yaml: dict) -> dict[str, tuple[int, int]]:
    """{name: (channels, stride)} of a model YAML dict's SideInput rows, as Model.side_inputs gives them."""
    return {str(r[3][0]): (int(r[3][1]), int(r[3][2]) if len(r[3]) > 2 else 8)
            for _, _, r in yaml_rows(model_yaml) if is_side_input(r)}


def side_input_levels(model_yaml: dict) -> dict[str, int]:
    """{SideInput name: the repository level its FeatureMapper decodes}, whatever grid the latents are warped to."""
    rows = yaml_rows(model_yaml)
    out = {}
    for i, (_, _, row) in enumerate(rows):
        src = _single_from(row, i) if row_role(row) == "mapper" else None
        if src is not None and 0 <= src < i and is_side_input(rows[src][2]):
            out[str(rows[src][2][3][0])] = row_block(row).level_of(row[3])
    return out


def match_levels(side_inputs: dict[str, tuple[int, int]], repo: LatentRepository,
                 levels: dict[str, int] | None = None) -> dict[str, int]:
    """{side input name: repository level}, channels checked: `levels` (side_input_levels of the model's YAML)
    where given, else the level whose detector stride the side input names (8/16/32)."""
    by_stride = {lv.stride_hint: i for i, lv in enumerate(repo.levels)}
    n_t, out = len(repo.timesteps), {}
    for name, (channels, stride) in side_inputs.items():
        level = (levels or {}).get(name, by_stride.get(stride))
        if level is None:
            raise ValueError(f"{repo.root}: the model's side input {name!r} has stride {stride}; the repository's "
                             f"levels have strides {sorted(by_stride)}")
        if not 0 <= level < len(repo.levels):
            raise ValueError(f"{repo.root}: the model's side input {name!r} reads level {level}; the repository "
                             f"has {len(repo.levels)}")
        lv = repo.levels[level]
        if channels != n_t * lv.channels_latent:
            raise ValueError(f"{repo.root}: the model's side input {name!r} takes {channels} channels, level {lv.name} "
                             f"holds {n_t} x {lv.channels_latent}; the model was bound to another repository")
        out[name] = level
    return out
