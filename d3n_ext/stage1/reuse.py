"""Whether finished stage-1 weights are the ones asked for, before a rerun skips their training.

Stage 1 resumes by skipping what is done, and a shared folder (`pipeline --features`) serves many
runs. Weights trained with other settings or on other images would then be reused silently: a
rerun with `--stage1 ddpm_train.iterations=4500` on a folder holding a 1,500-iteration DDPM would
report a 4,500-iteration protocol. So a checkpoint records what it was trained with and a skip
compares; only settings both sides know are compared (older checkpoints record fewer).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from d3n_ext.stage1.config import Stage1Config
from utils.files import file_hash

VAE_REPORT_ONLY = ("eval_images",)  # VAE settings that change its report, not its weights


def images_fingerprint(images: list[Path]) -> str:
    """sha256 over the sorted content hashes: the same images in any order or folder give the same print."""
    h = hashlib.sha256()
    for digest in sorted(file_hash(p) for p in images):
        h.update(digest.encode())
    return h.hexdigest()


def ddpm_training_record(cfg: Stage1Config, images: list[Path], seed: int) -> dict[str, Any]:
    """What ddpm.pt's info records beside its training log: recipe, seed and the images it fitted."""
    return {"ddpm_train": asdict(cfg.ddpm_train), "seed": seed, "images_sha256": images_fingerprint(images)}


def asked_ddpm(cfg: Stage1Config, images: list[Path], seed: int) -> dict[str, Any]:
    return {"unet": cfg.unet.to_dict(), "diffusion": cfg.diffusion.to_dict(), **ddpm_training_record(cfg, images, seed),
            "train_images": len(images)}


def recorded_ddpm(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The comparable part of a ddpm.pt; a checkpoint older than the full record keeps its log's figures."""
    info = ckpt.get("info") or {}
    recipe = info.get("ddpm_train") or {k: info[k] for k in ("iterations", "lr", "lrf") if k in info}
    record = {"unet": ckpt.get("unet"), "diffusion": ckpt.get("diffusion"), "ddpm_train": recipe}
    record.update({k: info[k] for k in ("seed", "images_sha256", "train_images") if k in info})
    return record


def asked_vae(cfg: Stage1Config) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg.vae).items() if k not in VAE_REPORT_ONLY}


def recorded_vae(ckpt: dict[str, Any]) -> dict[str, Any]:
    vae = (ckpt.get("info") or {}).get("vae") or {}
    return {k: v for k, v in vae.items() if k not in VAE_REPORT_ONLY}


def _flat(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def differences(recorded: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """'key recorded -> asked' for every setting known to both that differs (a content print shortened)."""
    rec, ask = dict(_flat(recorded)), dict(_flat(asked))
    short = lambda k, v: f"{v[:12]}…" if k.endswith("sha256") and isinstance(v, str) else v  # noqa: E731
    return [f"{k} {short(k, rec[k])} -> {short(k, ask[k])}" for k in ask if k in rec and not _same(rec[k], ask[k])]


def refuse_stale(path: Path, what: str, diffs: list[str], retrain: str) -> None:
    """One line: which finished weights, what differs (the first few), and the two ways on."""
    if diffs:
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise ValueError(f"{path}: this {what} was trained with other settings than asked ({'; '.join(diffs[:3])}{more}); "
                         f"{retrain}, or use another output folder")
