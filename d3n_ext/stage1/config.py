"""Stage-1 presets (`d3n_ext/stage1/configs/ddpm-*.yaml`) parsed once into typed sections; unknown keys rejected.

One YAML holds everything stage 1 needs because the parts depend on each other: the UNet's widths
fix the ResVAE's input channels, and the latent width sets the compression ratio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from d3n_ext.stage1.diffusion import DiffusionConfig
from d3n_ext.stage1.unet import UNetConfig
from utils.config import dataclass_from_mapping, read_yaml_mapping, reject_unknown

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
NOISE_RULES = ("per-image", "shared")
COMBINE_MODES = ("concat", "mean")


@dataclass
class DDPMTrainConfig:
    iterations: int = 100_000  # optimiser steps (train split only)
    batch_size: int = 16  # total over all ranks
    lr: float = 1e-4  # Adam; the paper's fine-tuning values are lr 5e-6, lrf 0.01
    lrf: float = 0.01  # final lr = lr · lrf, cosine decay
    warmup_iters: int = 0  # linear lr warm-up
    ema_decay: float = 0.9999  # EMA weights are the ones saved and used for features
    ema_tau: float = 2000  # EMA decay ramp (updates)
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    hflip: bool = True  # random horizontal flips


@dataclass
class FeatureConfig:
    timesteps: list[int] = field(default_factory=lambda: [100, 150, 250])  # 0-based schedule indices
    noise: str = "per-image"  # 'per-image' (seed from the image's pixels) or 'shared' (one ε for all)
    noise_seed: int = 0  # mixed into both rules
    combine: str = "concat"  # how decoded timesteps meet the detector: 'concat' (T·C channels) or 'mean'
    batch_size: int = 16  # images per extraction forward
    input_scale: int = 1  # k > 1: the DDPM trains on image_size crops of images stretched to k·image_size and
    # runs on the whole k·image_size image, taps average-pooled k×k back to their usual grids (finer detail)

    def __post_init__(self) -> None:
        steps = [self.timesteps] if isinstance(self.timesteps, (int, str)) else self.timesteps
        try:
            self.timesteps = [int(t) for t in steps]
        except (TypeError, ValueError):
            raise ValueError(f"features.timesteps {self.timesteps!r}: expected a list of integers, e.g. "
                             "[100, 150, 250]") from None
        if not self.timesteps or len(set(self.timesteps)) != len(self.timesteps):
            raise ValueError(f"features.timesteps {self.timesteps}: need distinct timesteps")
        if self.noise not in NOISE_RULES:
            raise ValueError(f"features.noise {self.noise!r}: expected one of {NOISE_RULES}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"features.combine {self.combine!r}: expected one of {COMBINE_MODES}")
        if not isinstance(self.input_scale, int) or isinstance(self.input_scale, bool) or self.input_scale < 1:
            raise ValueError(f"features.input_scale {self.input_scale!r}: expected an integer >= 1")


@dataclass
class VAETrainConfig:
    latent_channels: int = 64  # per scale; the paper's 512 -> 64
    hidden_channels: int | None = None  # ResVAE width; None = the feature's channels
    num_blocks: int = 2  # ResNet basic blocks in the encoder (and mirrored in the decoder)
    epochs: int = 2000  # passes over the train features (samples = images × timesteps)
    batch_size: int = 64
    lr: float = 1e-3  # Adam, cosine decay to lr · lrf
    lrf: float = 0.01
    kl_weight: float = 1.0  # the paper's KL penalty scale
    reduction: str = "sum"  # 'sum': per-sample sums (the ELBO); 'mean': per-element means of both terms
    eval_images: int = 64  # held-out (val) images for the VAE-vs-PCA report

    def __post_init__(self) -> None:
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"vae.reduction {self.reduction!r}: expected 'sum' or 'mean'")


@dataclass
class Stage1Config:
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ddpm_train: DDPMTrainConfig = field(default_factory=DDPMTrainConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


SECTIONS = {f.name: f.default_factory for f in fields(Stage1Config)}


def config_from_dict(raw: dict, source: str = "config") -> Stage1Config:
    """Build a Stage1Config from a (possibly partial) nested dict; missing sections take defaults."""
    reject_unknown(raw, SECTIONS, source, what="sections")
    parts = {}
    for name, factory in SECTIONS.items():
        parts[name] = dataclass_from_mapping(type(factory()), raw.get(name) or {}, f"{source}: {name}")
    return Stage1Config(**parts)


def resolve_config_path(path: str | Path) -> Path:
    """`ddpm-tiny`, `ddpm-tiny.yaml` or a path; presets are looked up in d3n_ext/stage1/configs/."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    presets = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"{path}: stage-1 config not found (presets: {presets})")


def load_stage1_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Stage1Config:
    """Parse a preset YAML and apply `{'section.key': value}` overrides (from command-line flags)."""
    path = resolve_config_path(path)
    raw = read_yaml_mapping(path, f"a mapping of sections {sorted(SECTIONS)}", empty_ok=True)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})
        raw[section][key] = value
    return config_from_dict(raw, str(path))

