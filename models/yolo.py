"""YOLOv5 models from YAML: the parser, the Detect and Segment heads and Model.

`python -m models.yolo --cfg yolov5s.yaml` prints the layer table, parameters and GFLOPs.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn

from models import common  # noqa: F401  (registers the core blocks)
from models.common import Conv, Proto, SideInput
from models.registry import BuildContext, lookup_block, register_block
from utils.config import read_yaml_mapping, reject_unknown
from utils.image_size import check_img_size
from utils.profiling import count_parameters, forward_gflops
from utils.torch_utils import fuse_conv_and_bn

LOGGER = logging.getLogger(__name__)
MODELS_DIR = Path(__file__).resolve().parent
MODEL_KEYS = {"nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head", "ch"}
MAX_CLASSES = 10_000  # a head for more would be mostly class logits (LVIS has 1,203 classes)
MAX_MULTIPLE = 10.0  # depth/width multiples beyond this build models no machine trains (yolov5x: 1.33, 1.25)


class ModelConfigError(ValueError):
    """A model YAML that cannot be built; the message names the file and the row."""


def _detect_builder(cls: type, ch_in: list[int], args: list, n: int, ctx: BuildContext):
    args = list(args)
    if len(args) >= 2 and isinstance(args[1], int):  # anchors given as a count per level
        args[1] = [list(range(args[1] * 2))] * len(ch_in)
    return cls(*args, ch=ch_in), 0


@register_block(builder=_detect_builder)
class Detect(nn.Module):
    """The YOLOv5 head: per level a 1x1 conv to na x (5 + nc) outputs, decoded against anchors in eval.

    Train mode returns the raw maps [(B, na, ny, nx, 5 + nc)] per level; eval returns
    (decoded (B, N, 5 + nc) in input pixels, raw maps). `anchors` are kept in stride units.
    """

    export = False  # True: eval returns only the decoded tensor (for ONNX/TorchScript)
    nm = 0  # mask coefficients per anchor after the 5 + nc detection outputs (Segment: 32)

    def __init__(self, nc: int = 80, anchors: list = (), ch: list[int] = ()):
        super().__init__()
        if len(anchors) != len(ch):
            raise ValueError(f"Detect: {len(anchors)} anchor rows for {len(ch)} input levels")
        self.nc, self.no = int(nc), int(nc) + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.register_buffer("stride", torch.ones(self.nl))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, xs: list[torch.Tensor]):
        raw, decoded = [], []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(x)
            if not self.training:
                decoded.append(self._decode(x, i))
        if self.training:
            return raw
        out = torch.cat(decoded, 1)
        return out if self.export else (out, raw)

    def raw_maps(self, output) -> list[torch.Tensor]:
        """The per-level raw maps inside this head's train-mode output (Segment adds prototypes)."""
        return output

    def _decode(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Raw map (B, na, ny, nx, no) of level i -> (B, na * ny * nx, no) boxes in input pixels."""
        bs, _, ny, nx, _ = x.shape
        return self._decode_boxes(x, i).view(bs, self.na * nx * ny, self.no)

    def _decode_boxes(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """(B, na, ny, nx, 5 + nc) raw -> xywh in input pixels, objectness and class probabilities."""
        _, _, ny, nx, _ = x.shape
        grid, anchor_grid = self._grid(i, nx, ny, x.device, x.dtype)
        xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
        xy = (xy * 2 - 0.5 + grid) * self.stride[i]
        wh = (wh * 2) ** 2 * anchor_grid
        return torch.cat((xy, wh, conf), 4)

    def _grid(self, i: int, nx: int, ny: int, device, dtype):
        key = (i, nx, ny, device, dtype)
        if key not in self._grids or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            y, x = torch.arange(ny, device=device, dtype=dtype), torch.arange(nx, device=device, dtype=dtype)
            yv, xv = torch.meshgrid(y, x, indexing="ij")
            # broadcast shapes, no Expand: exported graphs then take any batch (OpenVINO's broadcast of a
            # batch-1 Expand refuses batch 2)
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
            anchor_grid = (self.anchors[i] * self.stride[i]).to(dtype).view(1, self.na, 1, 1, 2)
            self._grids[key] = (grid, anchor_grid)
        return self._grids[key]

    def reset_grids(self) -> None:
        """Forget cached decoding grids (after anchors change, e.g. by AutoAnchor)."""
        self._grids.clear()

    def initialize_biases(self, class_frequency: torch.Tensor | None = None) -> None:
        """Objectness prior of ~8 objects per 640x640 image; class prior 0.6 / (nc - 0.99).

        Mask coefficients (Segment) keep their zero bias.
        """
        for conv, s in zip(self.m, self.stride):
            b = conv.bias.view(self.na, -1)
            b.data[:, 4] += math.log(8 / (640 / float(s)) ** 2)
            if class_frequency is None:
                b.data[:, 5:5 + self.nc] += math.log(0.6 / (self.nc - 0.99))
            else:
                b.data[:, 5:5 + self.nc] += torch.log(class_frequency / class_frequency.sum())
            conv.bias = nn.Parameter(b.view(-1), requires_grad=True)


def _segment_builder(cls: type, ch_in: list[int], args: list, n: int, ctx: BuildContext):
    """args = [nc, anchors, masks=32, prototype width=256]: the width scales with width_multiple, as YOLOv5's."""
    if not 2 <= len(args) <= 4:
        raise ValueError("Segment takes [nc, anchors, masks, prototype width]")
    masks = args[2] if len(args) > 2 else 32
    width = args[3] if len(args) > 3 else 256
    return _detect_builder(cls, ch_in, [args[0], args[1], masks, ctx.width(width)], n, ctx)


@register_block(builder=_segment_builder)
class Segment(Detect):
    """YOLOv5-seg's head: Detect with nm mask coefficients per anchor, plus a Proto branch on the first (P3) input.

    It returns what Detect returns in the same mode, paired with the prototypes (B, nm, 2 ny3, 2 nx3):
    train (raw maps [(B, na, ny, nx, 5 + nc + nm)], protos); eval ((decoded (B, N, 5 + nc + nm), raw maps),
    protos); export (decoded, protos), the two ONNX outputs. Decoded rows keep the coefficients raw.
    """

    def __init__(self, nc: int = 80, anchors: list = (), nm: int = 32, npr: int = 256, ch: list[int] = ()):
        super().__init__(nc, anchors, ch)
        self.nm, self.npr = int(nm), int(npr)
        self.no = 5 + self.nc + self.nm
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.proto = Proto(ch[0], self.npr, self.nm)

    def forward(self, xs: list[torch.Tensor]):
        return super().forward(xs), self.proto(xs[0])

    def raw_maps(self, output) -> list[torch.Tensor]:
        return output[0]

    def _decode(self, x: torch.Tensor, i: int) -> torch.Tensor:
        bs, _, ny, nx, _ = x.shape
        boxes = self._decode_boxes(x[..., :5 + self.nc], i)
        return torch.cat((boxes, x[..., 5 + self.nc:]), 4).view(bs, self.na * nx * ny, self.no)


def _resolve_arg(a, ctx: BuildContext):
    """The fixed symbol table of YAML args: 'nc', 'anchors', 'None'; anything else stays as written."""
    if isinstance(a, str):
        return {"nc": ctx.nc, "anchors": ctx.anchors, "None": None}.get(a, a)
    return a


def _row_inputs(f, i: int, chs: list[int], ch_img: int) -> tuple[list[int], list[int]]:
    froms = [f] if isinstance(f, int) else list(f) if isinstance(f, list) else None
    if not froms or not all(isinstance(x, int) and not isinstance(x, bool) for x in froms):
        raise ValueError(f"'from' must be an int or a list of ints, got {f!r}")
    channels = []
    for x in froms:
        j = x if x >= 0 else i + x
        if i == 0 and x == -1:
            channels.append(ch_img)
        elif 0 <= j < i:
            channels.append(chs[j])
        else:
            raise ValueError(f"'from' index {x} does not name an earlier layer (this is layer {i})")
    return froms, channels


def _build_context(cfg: dict, source: str) -> BuildContext:
    """The YAML's scalars, checked: a class count the head can hold and positive scale multiples."""
    nc = cfg.get("nc")
    if isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= MAX_CLASSES:
        raise ModelConfigError(f"{source}: nc={nc!r}: expected a whole number of classes from 1 to {MAX_CLASSES:,}")
    multiples = {}
    for key in ("depth_multiple", "width_multiple"):
        v = cfg.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_MULTIPLE:
            raise ModelConfigError(f"{source}: {key}={v!r}: expected a number in (0, {MAX_MULTIPLE}] "
                                   "(yolov5n: depth 0.33, width 0.25; yolov5x: 1.33, 1.25)")
        multiples[key] = float(v)
    return BuildContext(nc=nc, anchors=cfg.get("anchors"), **multiples)


def parse_model(cfg: dict, ch: int, source: str = "<dict>") -> tuple[nn.Sequential, list[int]]:
    """Build the layers of a model YAML dict; errors name the YAML row."""
    ctx = _build_context(cfg, source)
    for section in ("backbone", "head"):
        if not isinstance(cfg.get(section), list) or not cfg[section]:
            raise ModelConfigError(f"{source}: '{section}' must be a list of [from, number, module, args] rows")
    layers, save, chs = [], [], []
    rows = [("backbone", j, r) for j, r in enumerate(cfg["backbone"])] + [("head", j, r) for j, r in enumerate(cfg["head"])]
    for i, (section, j, row) in enumerate(rows):
        where = f"{source}: {section} row {j} (layer {i}) {row}"
        try:
            if not isinstance(row, list) or len(row) != 4:
                raise ValueError("a row is [from, number, module, args]")
            f, n, name, args = row
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"'number' must be a positive int, got {n!r}")
            entry = lookup_block(str(name))
            froms, ch_in = _row_inputs(f, i, chs, ch)
            n = max(round(n * ctx.depth_multiple), 1) if n > 1 else n
            args = [_resolve_arg(a, ctx) for a in (args if isinstance(args, list) else [args])]
            module, c2 = entry.builder(entry.cls, ch_in, args, n, ctx)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise ModelConfigError(f"{where}: {msg}") from None
        module.i, module.f, module.type = i, (froms[0] if len(froms) == 1 else froms), str(name)
        module.n, module.yaml_args, module.where = n, row[3], where
        module.np = count_parameters(module)
        save.extend(x % i for x in froms if x != -1 and not isinstance(module, SideInput))
        layers.append(module)
        chs.append(c2)
    if not isinstance(layers[-1], Detect):
        raise ModelConfigError(f"{source}: the last row must be Detect or Segment, got {layers[-1].type}")
    return nn.Sequential(*layers), sorted(set(save))


def load_model_yaml(cfg: str | Path | dict) -> tuple[dict, str]:
    """(YAML dict, a name for messages); bare names are looked up in models/."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg), cfg.get("yaml_file", "<dict>")
    path = Path(cfg)
    if not path.is_file() and (MODELS_DIR / path.name).is_file():
        path = MODELS_DIR / path.name
    if not path.is_file():
        raise ModelConfigError(f"{cfg}: model YAML not found")
    d = read_yaml_mapping(path, "a mapping with nc/anchors/backbone/head", ModelConfigError)
    reject_unknown(set(d) - {"yaml_file"}, MODEL_KEYS, str(path), error=ModelConfigError)
    for key in ("nc", "backbone", "head"):
        if key not in d:
            raise ModelConfigError(f"{path}: missing '{key}'")
    d["yaml_file"] = path.name
    return d, str(path)


def reads_side_inputs(model_yaml: dict) -> bool:
    """Whether a model YAML dict has SideInput rows: the model needs extra inputs (a plug-in's, e.g. latents)."""
    rows = [*(model_yaml.get("backbone") or []), *(model_yaml.get("head") or [])]
    return any(isinstance(r, list) and len(r) == 4 and r[2] == "SideInput" for r in rows)


class Model(nn.Module):
    """A YOLOv5 detector (Detect head) or instance segmenter (Segment head) built from a model YAML (path,
    bare name or dict); its output is its head's (see Detect and Segment)."""

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None,
                 anchors: list | None = None):
        super().__init__()
        self.yaml, source = load_model_yaml(cfg)
        ch = self.yaml["ch"] = int(self.yaml.get("ch", ch))
        if nc is not None and nc != self.yaml["nc"]:
            LOGGER.info("Overriding %s nc=%s with nc=%s", self.yaml.get("yaml_file", "model"), self.yaml["nc"], nc)
            self.yaml["nc"] = int(nc)
        if anchors is not None:
            self.yaml["anchors"] = anchors
        self.in_channels = ch
        self.model, self.save = parse_model(self.yaml, ch, source)
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self._init_detect()
        self._init_weights()

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def nm(self) -> int:
        """Mask coefficients per detection row: 0 for a detector, 32 for a YOLOv5-seg model (exports say it too)."""
        return self.detect.nm

    @property
    def side_inputs(self) -> dict[str, tuple[int, int]]:
        """Extra inputs this model needs: name -> (channels, stride relative to the image)."""
        return {m.name: (m.channels, m.stride) for m in self.model if isinstance(m, SideInput)}

    def _init_detect(self) -> None:
        m, s = self.detect, 256
        was_training = self.training
        self.train()  # raw maps only: their sizes give the strides
        with torch.no_grad():
            x = torch.zeros(1, self.in_channels, s, s)
            raw = m.raw_maps(self.forward(x, side=self.dummy_side(x), explain_errors=True))
        m.stride.copy_(torch.tensor([s / r.shape[-2] for r in raw]))
        m.anchors /= m.stride.view(-1, 1, 1)
        self._check_anchor_order()
        m.initialize_biases()
        self.train(was_training)

    def dummy_side(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Zero side inputs shaped for image batch x (dry runs, profiling)."""
        h, w = x.shape[-2:]
        return {name: torch.zeros(x.shape[0], c, max(h // s, 1), max(w // s, 1), device=x.device)
                for name, (c, s) in self.side_inputs.items()}

    def _check_anchor_order(self) -> None:
        """Anchor areas must grow with stride as the levels do; flip them when a YAML lists them reversed."""
        m = self.detect
        area = m.anchors.prod(-1).mean(-1).view(-1)
        if area[-1] != area[0] and (area[-1] - area[0]).sign() != (m.stride[-1] - m.stride[0]).sign():
            LOGGER.info("Reversing anchor order to match the strides")
            m.anchors[:] = m.anchors.flip(0)

    def _init_weights(self) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.eps, mod.momentum = 1e-3, 0.03
            elif isinstance(mod, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
                mod.inplace = True

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    def forward(self, x: torch.Tensor, side: dict[str, torch.Tensor] | None = None, explain_errors: bool = False):
        """Images (B, C, H, W) and, for models with SideInput rows, their named side inputs."""
        outputs: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1 and not isinstance(m, SideInput):
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            if explain_errors:  # the dry run at build time: name the YAML row that cannot run
                try:
                    y = m(side) if isinstance(m, SideInput) else m(x)
                except Exception as e:  # noqa: BLE001 - any failure here is a YAML problem to report
                    raise ModelConfigError(f"{m.where}: fails on a dry run ({str(e).splitlines()[0][:200]})") from None
            else:
                y = m(side) if isinstance(m, SideInput) else m(x)
            x = y
            outputs.append(y if m.i in self.save else None)
        return x

    def fuse(self) -> "Model":
        """Fold BatchNorms into convolutions for inference (same outputs, faster)."""
        for m in self.model.modules():
            if isinstance(m, Conv) and hasattr(m, "bn"):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                del m.bn
                m.forward = m.forward_fused
        return self

    def info(self, imgsz: int = 640, verbose: bool = False) -> dict:
        """Log the layer table (verbose) and a summary; returns {'layers','parameters','gradients','gflops'}."""
        if verbose:
            LOGGER.info("%3s %18s %3s %10s  %-40s %-30s", "", "from", "n", "params", "module", "arguments")
            for m in self.model:
                LOGGER.info("%3s %18s %3s %10s  %-40s %-30s", m.i, str(m.f), m.n, f"{m.np:,}", m.type, m.yaml_args)
        summary = {"layers": len(list(self.modules())), "parameters": count_parameters(self),
                   "gradients": sum(p.numel() for p in self.parameters() if p.requires_grad),
                   "gflops": self.gflops(imgsz)}
        LOGGER.info("%s summary: %d layers, %s parameters, %s gradients, %.1f GFLOPs at %d",
                    self.yaml.get("yaml_file", "Model"), summary["layers"], f"{summary['parameters']:,}",
                    f"{summary['gradients']:,}", summary["gflops"], imgsz)
        return summary

    def example_inputs(self, imgsz: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A zero image (1, C, imgsz, imgsz) and its zero side inputs: what GFLOPs and latency are measured on."""
        x = torch.zeros(1, self.in_channels, imgsz, imgsz, device=next(self.parameters()).device)
        return x, self.dummy_side(x)

    def gflops(self, imgsz: int = 640) -> float:
        """GFLOPs of one forward at imgsz x imgsz (a multiple of the largest stride), counted by utils.profiling."""
        return forward_gflops(self, self.example_inputs(imgsz))


def build_parser() -> argparse.ArgumentParser:
    """`python -m models.yolo`'s flags; parses nothing."""
    parser = argparse.ArgumentParser(description="Build a model from its YAML and print its layer table.")
    parser.add_argument("--cfg", default="yolov5s.yaml",
                        help="model YAML, path or name in models/ (default: %(default)s)")
    parser.add_argument("--nc", type=int, default=None, help="override the number of classes (default: the YAML's nc)")
    parser.add_argument("--imgsz", type=int, default=640,
                        help="image size for the GFLOPs figure (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    opt = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model = Model(opt.cfg, nc=opt.nc)
        imgsz = check_img_size(opt.imgsz, int(model.stride.max()))
    except (ModelConfigError, ValueError) as e:
        sys.exit(f"error: {e}")
    model.info(imgsz=imgsz, verbose=True)


if __name__ == "__main__":
    main()
