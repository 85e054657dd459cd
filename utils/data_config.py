"""Data YAMLs (YOLOv5 format) parsed once into a DataConfig with resolved image lists.

Keys: `path` (root; relative paths resolve against the repository root), `train`, `val`, optional
`test` (dirs, image files, .txt lists, or lists of those, relative to `path`), optional `unlabeled`
(images without labels, named the same ways: stage 1 and distillation read them, ground-truth training
never does, and no label file of theirs is opened), `names` (list or {index: name}), optional `nc`, and
optional `generate: {name: ..., **kwargs}` naming a registered dataset generator that builds the data on
first use. Nothing in a data YAML is ever executed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path

from utils.config import read_yaml_mapping, reject_unknown

LOGGER = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
IMG_FORMATS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm")
VID_FORMATS = (".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".wmv")
SPLITS = ("train", "val", "test", "unlabeled")  # unlabeled: images only, never a label file
KNOWN_KEYS = {"path", *SPLITS, "names", "nc", "generate", "download"}

# Fixed table of dataset generators a data YAML may name (module, function): no strings are executed.
GENERATORS: dict[str, tuple[str, str]] = {"synth-defects": ("data.synthetic", "ensure_dataset")}


class DataConfigError(ValueError):
    """A data YAML that cannot be used; the message names the file and the key."""


@dataclass
class DataConfig:
    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[Path]] = field(default_factory=dict)  # split -> image files

    @property
    def nc(self) -> int:
        return len(self.names)

    def images(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise DataConfigError(f"{self.yaml_path}: no '{split}' split (has: {', '.join(self.splits)})")
        return self.splits[split]


def img2label_paths(img_paths: list[Path]) -> list[Path]:
    """/root/images/train/a.png -> /root/labels/train/a.txt (the last /images/ becomes /labels/)."""
    out = []
    for p in img_paths:
        parts = list(Path(p).parts)
        idx = max((i for i, s in enumerate(parts) if s == "images"), default=None)
        if idx is not None:
            parts[idx] = "labels"
        out.append(Path(*parts).with_suffix(".txt"))
    return out


def list_images(source: str | Path | list, base: Path | None = None) -> list[Path]:
    """Image files named by a directory (recursive), a file, a .txt list or a glob; sorted, unique."""
    if isinstance(source, (list, tuple)):
        return sorted({p for s in source for p in list_images(s, base)})
    p = Path(source)
    if base is not None and not p.is_absolute():
        p = base / p
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_FORMATS and f.is_file())
    if p.suffix.lower() == ".txt" and p.is_file():
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        return sorted({(p.parent / ln).resolve() if not Path(ln).is_absolute() else Path(ln) for ln in lines})
    if p.is_file():
        return [p]
    if any(ch in str(p) for ch in "*?["):
        return sorted(f for f in p.parent.glob(p.name) if f.suffix.lower() in IMG_FORMATS)
    raise FileNotFoundError(f"{p}: no such image file, directory or list")


def _parse_names(yaml_path: Path, raw: dict) -> list[str]:
    names = raw.get("names")
    if isinstance(names, dict):
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in names):
            odd = next(k for k in names if not isinstance(k, int) or isinstance(k, bool))
            raise DataConfigError(f"{yaml_path}: 'names' keys must be class indices 0..{len(names) - 1}, "
                                  f"got {odd!r}; write them unquoted (0: crazing)")
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DataConfigError(f"{yaml_path}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        names = [str(names[k]) for k in keys]
    if not isinstance(names, list) or not names:
        raise DataConfigError(f"{yaml_path}: 'names' must be a non-empty list or {{index: name}} mapping")
    nc = raw.get("nc", len(names))
    if isinstance(nc, bool) or not isinstance(nc, int) or nc != len(names):
        raise DataConfigError(f"{yaml_path}: nc={nc!r} but {len(names)} names are given")
    return [str(n) for n in names]


def _checked_generator(yaml_path: Path, spec: dict):
    """(the registered generator, its keywords from the YAML), each keyword checked against its signature."""
    if not isinstance(spec, dict) or spec.get("name") not in GENERATORS:
        raise DataConfigError(f"{yaml_path}: 'generate.name' must be one of {sorted(GENERATORS)}")
    module, func = GENERATORS[spec["name"]]
    generator = getattr(importlib.import_module(module), func)
    known = [n for n, p in inspect.signature(generator).parameters.items() if p.kind is p.KEYWORD_ONLY]
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    unknown = sorted(set(kwargs) - set(known), key=str)
    if unknown:
        raise DataConfigError(f"{yaml_path}: unknown 'generate' keys {unknown} for {spec['name']!r} "
                              f"(known: {', '.join(['name', *known])})")
    return generator, kwargs


def _run_generator(yaml_path: Path, root: Path, spec: dict) -> None:
    """Call the registered generator with the YAML's keywords, checked first."""
    generator, kwargs = _checked_generator(yaml_path, spec)
    try:
        generator(root, **kwargs)
    except (FileExistsError, ValueError) as e:
        raise DataConfigError(f"{yaml_path}: generate: {e}") from None


def load_data_config(path: str | Path, autogenerate: bool = True, list_splits: bool = True) -> DataConfig:
    """Parse and check a data YAML; build a generated dataset on first use (`list_splits=False`: the YAML alone,
    no image listed, nothing generated)."""
    yaml_path = Path(path)
    if not yaml_path.is_file() and (REPO_ROOT / "data" / yaml_path.name).is_file() and not yaml_path.parent.name:
        yaml_path = REPO_ROOT / "data" / yaml_path.name  # `--data synth-defects.yaml` as in YOLOv5
    if not yaml_path.is_file():
        raise DataConfigError(f"{yaml_path}: data YAML not found")
    raw = read_yaml_mapping(yaml_path, "a mapping with path/train/val/names", DataConfigError)
    reject_unknown(raw, KNOWN_KEYS, str(yaml_path), error=DataConfigError)
    if "download" in raw:
        LOGGER.warning("%s: 'download' is ignored (nothing is downloaded or executed); fetch the data yourself", yaml_path)
    for key in ("train", "val"):
        if key not in raw:
            raise DataConfigError(f"{yaml_path}: missing '{key}'")
    names = _parse_names(yaml_path, raw)
    root = Path(raw.get("path") or yaml_path.parent)
    root = root if root.is_absolute() else (REPO_ROOT / root).resolve()
    if not list_splits:
        if "generate" in raw:
            _checked_generator(yaml_path, raw["generate"])
        return DataConfig(yaml_path=yaml_path, root=root, names=names)
    if "generate" in raw and autogenerate:
        _run_generator(yaml_path, root, raw["generate"])
    cfg = DataConfig(yaml_path=yaml_path, root=root, names=names)
    for split in SPLITS:
        if raw.get(split):
            try:
                cfg.splits[split] = list_images(raw[split], base=root)
            except FileNotFoundError as e:
                raise DataConfigError(f"{yaml_path}: split '{split}': {e}") from None
    if "unlabeled" in raw and not cfg.splits.get("unlabeled"):
        raise DataConfigError(f"{yaml_path}: 'unlabeled: {raw['unlabeled']}' names no images "
                              f"(expected a folder, a glob or a .txt list of {', '.join(IMG_FORMATS[:4])} ... files)")
    return cfg


def check_data_yaml(path: str | Path) -> DataConfig:
    """The check scripts run before they load weights, generate data or scan labels: the YAML's keys and names
    (its splits' images are listed later, by load_data_config, once the cheap checks have passed)."""
    return load_data_config(path, autogenerate=False, list_splits=False)
