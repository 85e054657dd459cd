"""FeatureMapper (Fig. 5): the frozen VAE decoder that turns a level's stored latents back into DDPM features.

A model YAML names it after the level's SideInput:

    [-1, 1, SideInput, [latents_p3, 192, 8]]             # T·C_latent = 3·64 channels on the stride-8 grid
    [-1, 1, FeatureMapper, [0, 3, 64, 256, 256, 2]]      # level 0: 3 timesteps, 64 -> 256 channels

Its args describe the decoder completely, so a checkpoint (YAML + state_dict) rebuilds it without the
repository; `binding.bind_repository` fills them in from a repository and `load_repository_weights`
copies the weights. The decoder never trains: its parameters have requires_grad False from the
start, it stays in eval mode (BatchNorm keeps its statistics) and runs under no_grad, so no graph
is kept for it. Timesteps are decoded separately and combined afterwards (D3N-SPEC §2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
from torchvision.ops import FrozenBatchNorm2d

from d3n_ext.stage1.features import FeatureDecoder, combine_timesteps
from d3n_ext.stage1.resvae import ResVAEConfig, ResVAEDecoder
from models.registry import BuildContext, register_block, single_input

DECODER_KINDS = ("resvae", "pca", "raw")  # ResVAE decoder, PCA inverse (a 1x1 conv), none (raw features)
COMBINE_MODES = ("concat", "mean")


@dataclass(frozen=True)
class MapperSpec:
    """The YAML args of a FeatureMapper row, in order; the last three may be left out."""

    level: int  # repository level: 0 = P3, 1 = P4, 2 = P5
    timesteps: int  # T, stacked along the latent map's channels
    latent_channels: int  # C_latent per timestep
    feature_channels: int  # C_feature per timestep, what the decoder restores
    width: int  # the ResVAE decoder's hidden channels (0 for pca/raw)
    blocks: int  # its ResNet basic blocks (0 for pca/raw)
    decoder: str = "resvae"
    combine: str = "concat"  # timesteps after decoding: concatenated (T·C_feature channels) or averaged
    fingerprint: str = ""  # of the repository the args were bound to ('' = unbound, random decoder)

    @classmethod
    def from_args(cls, args: list) -> "MapperSpec":
        names = [f.name for f in fields(cls)]
        if not 6 <= len(args) <= len(names):
            raise ValueError(f"FeatureMapper args are [{', '.join(names)}] (the last 3 optional), got {args!r}")
        spec = cls(**dict(zip(names, args)))
        ints = [getattr(spec, n) for n in names[:6]]
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in ints) or min(ints[1:4]) < 1:
            raise ValueError(f"FeatureMapper: level, timesteps, channels, width and blocks must be ints >= 0 "
                             f"(timesteps and channels >= 1), got {ints}")
        if spec.decoder not in DECODER_KINDS:
            raise ValueError(f"FeatureMapper decoder {spec.decoder!r}: expected one of {DECODER_KINDS}")
        if spec.combine not in COMBINE_MODES:
            raise ValueError(f"FeatureMapper combine {spec.combine!r}: expected one of {COMBINE_MODES}")
        if spec.decoder == "resvae" and spec.width < 1:
            raise ValueError("FeatureMapper: a resvae decoder needs width >= 1")
        if spec.decoder == "raw" and spec.latent_channels != spec.feature_channels:
            raise ValueError("FeatureMapper: a raw repository stores the features themselves "
                             "(latent == feature channels)")
        return spec

    def to_args(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]

    @property
    def in_channels(self) -> int:
        return self.timesteps * self.latent_channels

    @property
    def out_channels(self) -> int:
        return self.feature_channels * (self.timesteps if self.combine == "concat" else 1)


@dataclass(frozen=True)
class LevelBinding:
    """What the rows of one level are bound to: the decoder's args, the latent grid's stride and size."""

    spec: MapperSpec
    stride: int
    hw: tuple[int, int]


def frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for a FrozenBatchNorm2d (same state_dict keys, fixed statistics).

    Besides never updating, it keeps the model-wide YOLOv5 initialisation (eps 1e-3 on every
    BatchNorm2d) away from the decoder, which must compute exactly what the VAE was trained as.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            frozen_batchnorm(child)
    return module


def build_decoder(spec: MapperSpec) -> nn.Module:
    """The decoder network the spec describes; its state_dict loads the stage-1 compressor's decoder."""
    if spec.decoder == "resvae":
        cfg = ResVAEConfig(in_channels=spec.feature_channels, latent_channels=spec.latent_channels,
                           hidden_channels=spec.width, num_blocks=spec.blocks)
        return frozen_batchnorm(ResVAEDecoder(cfg))
    if spec.decoder == "pca":
        return nn.Conv2d(spec.latent_channels, spec.feature_channels, 1)  # ChannelPCA.decoder
    return nn.Identity()


@register_block()
class FeatureMapper(nn.Module):
    """(B, T·C_latent, h, w) latents -> (B, T·C_feature, h, w) DDPM features (or (B, C_feature, h, w) with mean)."""

    d3n_role = "mapper"  # binding sizes its row and its SideInput for a repository level (blocks.py)

    def __init__(self, spec: MapperSpec):
        super().__init__()
        self.spec = spec
        c = spec.feature_channels
        self.decoder = FeatureDecoder(build_decoder(spec), torch.zeros(c), torch.ones(c))  # frozen, eval
        self.requires_grad_(False)

    @classmethod
    def from_yaml(cls, ch_in: list[int], args: list, n: int, ctx: BuildContext) -> tuple[nn.Module, int]:
        c_in = single_input(ch_in, "FeatureMapper")
        if n != 1:
            raise ValueError(f"FeatureMapper: 'number' must be 1, got {n}")
        spec = MapperSpec.from_args(list(args))
        if c_in != spec.in_channels:
            raise ValueError(f"FeatureMapper: its input has {c_in} channels, but {spec.timesteps} timesteps x "
                             f"{spec.latent_channels} latent channels = {spec.in_channels}; bind the YAML to the "
                             "repository (train.py --latents) or fix the SideInput row")
        return cls(spec), spec.out_channels

    @staticmethod
    def level_of(args: list) -> Any:
        """The repository level a row's args ask for (checked by binding)."""
        return args[0] if args else 0

    @staticmethod
    def bind_args(args: list, level: LevelBinding) -> list:
        """The row's args rebuilding `level`'s decoder; the YAML keeps its own choice of `combine`."""
        return dataclasses.replace(level.spec, combine=args[7] if len(args) > 7 else "concat").to_args()

    @staticmethod
    def side_input_channels(args: list) -> int:
        """Channels of the SideInput a row with these (bound) args reads: T·C_latent."""
        return MapperSpec(*args).in_channels

    @staticmethod
    def bound_fingerprint(args: list) -> str:
        """The repository fingerprint a row was bound to, '' if never bound."""
        return args[8] if len(args) > 8 else ""

    def train(self, mode: bool = True) -> "FeatureMapper":
        return super().train(False)  # the decoder is frozen: eval even while the detector trains

    def load_decoder(self, state_dict: dict[str, torch.Tensor], mean: torch.Tensor, std: torch.Tensor) -> None:
        """Copy a stage-1 decoder's weights and the feature statistics it was trained against."""
        self.decoder.decoder.load_state_dict(state_dict)
        self.decoder.mean.copy_(mean.float())
        self.decoder.std.copy_(std.float())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t, c = self.spec.timesteps, self.spec.latent_channels
        with torch.no_grad():
            y = self.decoder(z.unflatten(1, (t, c)))  # (B, T, C_feature, h, w), raw feature units
            return combine_timesteps(y, self.spec.combine)
