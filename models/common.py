"""The building blocks of YOLOv5 networks, each registered under the name model YAMLs use."""

from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import BuildContext, conv_like, csp_like, register_block, same_channels, single_input


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """'Same' padding for an odd kernel (with dilation d)."""
    if p is None:
        p = (d * (k - 1) + 1) // 2 if isinstance(k, int) else [d * (x - 1) // 2 + 1 for x in k]
    return p


@register_block(builder=conv_like)
class Conv(nn.Module):
    """Convolution -> BatchNorm -> SiLU; `fuse()` folds the BatchNorm away for inference."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 d: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


@register_block(builder=conv_like)
class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv with an optional residual (only when channels match)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register_block(builder=csp_like)
class C3(nn.Module):
    """CSP bottleneck with three convolutions: half the channels pass through n Bottlenecks."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


@register_block(builder=conv_like)
class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained k x k max-pools equal SPP's 5/9/13 pools."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


@register_block(builder=conv_like)
class SPP(nn.Module):
    """Spatial pyramid pooling with parallel pools (YOLOv3/early YOLOv5 YAMLs)."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


@register_block(builder=conv_like)
class Focus(nn.Module):
    """Space-to-depth then Conv (the first layer of pre-v6 YOLOv5 YAMLs)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


def _concat_builder(cls: type, ch_in: list[int], args: list, n: int, ctx: BuildContext):
    return cls(*args), sum(ch_in)


@register_block(builder=_concat_builder)
class Concat(nn.Module):
    """Concatenate a list of tensors along a dimension (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


def _proto_builder(cls: type, ch_in: list[int], args: list, n: int, ctx: BuildContext):
    """args = [hidden, masks]: the hidden width scales with width_multiple, the prototype count does not."""
    c1 = single_input(ch_in, cls.__name__)
    if len(args) > 2:
        raise ValueError("Proto takes [hidden channels, number of prototypes]")
    hidden, masks = (args[0] if args else 256), (args[1] if len(args) > 1 else 32)
    return cls(c1, ctx.width(hidden), int(masks)), int(masks)


@register_block(builder=_proto_builder)
class Proto(nn.Module):
    """YOLOv5-seg's mask prototypes: 3x3 Conv, nearest x2 upsample, 3x3 Conv, 1x1 Conv to c2 maps.

    On the P3 map (stride 8) it gives c2 prototypes at stride 4, which each instance combines linearly
    with its own mask coefficients.
    """

    def __init__(self, c1: int, c_: int = 256, c2: int = 32):
        super().__init__()
        self.cv1 = Conv(c1, c_, k=3)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.cv2 = Conv(c_, c_, k=3)
        self.cv3 = Conv(c_, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c1, h, w) -> (B, c2, 2h, 2w)
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


def _side_input_builder(cls: type, ch_in: list[int], args: list, n: int, ctx: BuildContext):
    if len(args) not in (2, 3):
        raise ValueError("SideInput takes [name, channels, stride]")
    return cls(*args), int(args[1])


@register_block(builder=_side_input_builder)
class SideInput(nn.Module):
    """A named extra input of the model (per-image maps computed elsewhere), read from `side[name]`.

    The map has `channels` channels on the grid of the image divided by `stride` (what a dataloader
    warps it to). Its `from` is ignored. Models without SideInput rows take images alone.
    """

    def __init__(self, name: str, channels: int, stride: int = 8):
        super().__init__()
        self.name, self.channels, self.stride = str(name), int(channels), int(stride)

    def forward(self, side: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if not side or self.name not in side:
            raise KeyError(f"this model needs the side input {self.name!r} (e.g. latents from a feature repository)")
        return side[self.name]


register_block("nn.Upsample", builder=same_channels)(nn.Upsample)
register_block("nn.Identity", builder=same_channels)(nn.Identity)
