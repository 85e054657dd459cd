"""Stage 1 end to end (Fig. 3): train the DDPM, store raw train features, fit ResVAE/PCA, build the
latent repository, verify it. Each step skips work that is already done, so `run_all` resumes.

Output folder (`--out`, itself the latent repository):
    ddpm.pt, vae.pt, pca.pt        weights (kinds 'ddpm', 'resvae', 'pca')
    raw/                           raw-feature repository (train split; every split with --raw)
    manifest.json, index.json, level{0,1,2}.npy   the ResVAE latents of every split
    pca/                           the PCA-coefficient repository (with --compressor pca)
    vae_report.json                held-out reconstruction error, ResVAE vs PCA
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from d3n_ext.stage1.checkpoints import LEVEL_NAMES, STRIDE_HINTS, load_compressors, load_ddpm, save_compressors
from d3n_ext.stage1.config import Stage1Config, load_stage1_config
from d3n_ext.stage1.ddpm_training import train_ddpm
from d3n_ext.stage1.features import DDPMFeatureExtractor, LatentEncoder
from d3n_ext.stage1.repository import LatentRepository
from d3n_ext.stage1.repository_builder import LevelSpec, build_repository, plan_images
from d3n_ext.stage1.reuse import asked_ddpm, asked_vae, differences, recorded_ddpm, recorded_vae, refuse_stale
from d3n_ext.stage1.vae_training import (fit_compressors, image_feature_batches, reconstruction_errors,
                                         repository_feature_batches)
from utils.checkpoints import load_checkpoint
from utils.data_config import DataConfig, check_data_yaml, load_data_config
from utils.dataloaders import verified_images
from utils.unlabeled import check_unlabeled
from utils.files import atomic_write_text, file_hash
from utils.torch_utils import (barrier, distributed_env, init_distributed, init_seeds, main_process_first,
                               select_device)

LOGGER = logging.getLogger(__name__)

COMPRESSOR_FILES = {"resvae": "vae.pt", "pca": "pca.pt"}
FITTING_SPLITS = ("train", "unlabeled")  # the images the DDPM and the VAE fit (no labels needed)


@dataclass
class Stage1Options:
    data: str | Path  # data YAML
    out: str | Path = "runs/features/exp"  # the repository folder
    config: str | Path = "ddpm-tiny"  # preset name or YAML path
    overrides: dict[str, Any] = field(default_factory=dict)  # {'section.key': value} from flags
    device: str = ""
    seed: int = 0
    splits: list[str] | None = None  # splits to encode; None = every split of the data YAML
    raw: bool = False  # keep raw features of every split (PCA / no-compression ablations)
    compressor: str = "resvae"  # what `build` stores: ResVAE μ (out/) or PCA coefficients (out/pca/)
    ddpm_weights: str | Path | None = None  # build from these instead of out/ddpm.pt (copied in)
    vae_weights: str | Path | None = None  # build from these instead of out/vae.pt (copied in)
    force: bool = False  # retrain even when weights exist
    quiet: bool = False


@dataclass
class Stage1Context:
    opts: Stage1Options
    cfg: Stage1Config
    data: DataConfig
    device: torch.device
    out: Path
    rank: int
    world: int

    @property
    def quiet(self) -> bool:
        return self.opts.quiet or self.rank != 0


def prepare(opts: Stage1Options) -> Stage1Context:
    """Parse the configs once and read the given weights (before any folder is made or data generated), pick the
    device, join torchrun's process group if there is one."""
    cfg = load_stage1_config(opts.config, opts.overrides)
    if opts.compressor not in COMPRESSOR_FILES:
        raise ValueError(f"--compressor {opts.compressor!r}: expected one of {sorted(COMPRESSOR_FILES)}")
    check_data_yaml(opts.data)
    if opts.ddpm_weights:
        load_checkpoint(opts.ddpm_weights, expect="ddpm")
    if opts.vae_weights:
        load_checkpoint(opts.vae_weights)  # a readable checkpoint; its kind is checked where it is used
    device = select_device(opts.device)
    rank, local_rank, world = distributed_env()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
    init_distributed(device)
    init_seeds(opts.seed)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    return Stage1Context(opts, cfg, usable_images(load_data_config(opts.data)), device, out, rank, world)


def usable_images(data: DataConfig) -> DataConfig:
    """The data with each split cut to the images training can read (the label scan's list, warned alike).

    An undecodable or tiny image would otherwise abort the DDPM or the build, after the baseline
    has trained in the pipeline, while train.py just skips it. Stage 1 needs no labels, so it opens
    no label file (with --labels, the unlabelled share's labels must stay unread).
    """
    with main_process_first():
        check_unlabeled(data)  # no val/test image among the unlabelled ones (one line if so)
        splits = {s: verified_images(files, f"{s}: ") for s, files in data.splits.items()}
    for split, files in splits.items():
        if not files:
            raise ValueError(f"{data.yaml_path}: split '{split}': none of its images is readable")
    return replace(data, splits=splits)


def step_train_ddpm(ctx: Stage1Context) -> Path:
    path = ctx.out / "ddpm.pt"
    if ctx.opts.ddpm_weights:
        if ctx.rank == 0 and Path(ctx.opts.ddpm_weights).resolve() != path.resolve():
            shutil.copyfile(ctx.opts.ddpm_weights, path)
    elif path.is_file() and not ctx.opts.force:
        asked = asked_ddpm(ctx.cfg, fitting_images(ctx.data), ctx.opts.seed)
        diffs = differences(recorded_ddpm(load_checkpoint(path, expect="ddpm")), asked)
        refuse_stale(path, "DDPM", diffs, "extract_features.py --force retrains it")
        LOGGER.info("%s exists, trained as asked: DDPM training skipped (--force retrains)", path)
    else:
        train_ddpm(ctx.cfg, fitting_images(ctx.data), path, ctx.device, ctx.opts.seed, ctx.quiet)
    barrier()
    return path


def fitting_images(data: DataConfig) -> list[Path]:
    """What the DDPM and the VAE learn from: train and unlabeled images (stage 1 never reads a label)."""
    return [p for s in FITTING_SPLITS if s in data.splits for p in data.images(s)]


def _split_images(ctx: Stage1Context, splits: list[str]) -> dict[str, list[Path]]:
    return {s: ctx.data.images(s) for s in splits if s in ctx.data.splits}


def _build(ctx: Stage1Context, root: Path, splits: list[str], encoder: LatentEncoder, base: dict[str, Any]) -> LatentRepository:
    """Shared by the raw and latent repositories: plan, level specs, manifest, sharded build."""
    plan = plan_images(ctx.data.root, _split_images(ctx, splits), ctx.quiet)
    if not plan.keys:
        raise ValueError(f"{ctx.data.yaml_path}: no images in splits {splits}")
    shapes, channels = encoder.extractor.level_shapes(), encoder.level_channels()
    levels = [LevelSpec(LEVEL_NAMES[i], channels[i], c, (h, w), STRIDE_HINTS[i]) for i, (c, h, w) in enumerate(shapes)]
    fc = ctx.cfg.features
    manifest = {**base, "timesteps": fc.timesteps, "features": asdict(fc),
                "ddpm": {"image_size": ctx.cfg.unet.image_size, "in_channels": ctx.cfg.unet.in_channels,
                         "schedule": ctx.cfg.diffusion.schedule, "num_timesteps": ctx.cfg.diffusion.timesteps},
                "data": {"yaml": str(ctx.data.yaml_path), "root": str(ctx.data.root), "splits": splits}}
    build_repository(root, plan, levels, encoder, manifest, fc.batch_size, ctx.rank, ctx.world, ctx.quiet)
    return LatentRepository(root)


def _extractor(ctx: Stage1Context) -> DDPMFeatureExtractor:
    if not (ctx.out / "ddpm.pt").is_file():
        raise FileNotFoundError(f"{ctx.out / 'ddpm.pt'}: no DDPM weights yet; run extract_features.py train-ddpm first (or pass --ddpm)")
    unet, diffusion, ckpt = load_ddpm(ctx.out / "ddpm.pt", ctx.device)
    if ckpt["unet"] != ctx.cfg.unet.to_dict():
        LOGGER.warning("%s: UNet differs from the config %s; the checkpoint's is used", ctx.out / "ddpm.pt", ctx.opts.config)
    trained_scale = (ckpt.get("info") or {}).get("input_scale", 1)
    if trained_scale != ctx.cfg.features.input_scale:
        raise ValueError(f"{ctx.out / 'ddpm.pt'}: trained at input_scale {trained_scale}, but features.input_scale is "
                         f"{ctx.cfg.features.input_scale}; retrain it (extract_features.py train-ddpm) or match the config")
    return DDPMFeatureExtractor(unet, diffusion, ctx.cfg.features)


def step_raw(ctx: Stage1Context) -> LatentRepository:
    """Raw fp16 features: the train split (to fit the compressors), or every split with --raw."""
    splits = list(ctx.data.splits) if ctx.opts.raw else [s for s in FITTING_SPLITS if s in ctx.data.splits]
    weights = {"ddpm": {"file": "../ddpm.pt", "sha256": file_hash(ctx.out / "ddpm.pt")}}
    return _build(ctx, ctx.out / "raw", splits, LatentEncoder(_extractor(ctx), None), {"kind": "raw", "weights": weights})


def step_train_vae(ctx: Stage1Context) -> Path:
    """Fit ResVAE and PCA on the raw train features, save both, and write the held-out report."""
    vae_path, pca_path = ctx.out / "vae.pt", ctx.out / "pca.pt"
    ddpm_sha = file_hash(ctx.out / "ddpm.pt")
    if ctx.opts.vae_weights:
        if ctx.rank == 0 and Path(ctx.opts.vae_weights).resolve() != vae_path.resolve():
            shutil.copyfile(ctx.opts.vae_weights, vae_path)
        barrier()
        return vae_path
    previous = load_checkpoint(vae_path) if vae_path.is_file() and not ctx.opts.force else None
    if previous is not None and previous["info"].get("ddpm_sha256") == ddpm_sha:
        diffs = differences(recorded_vae(previous), asked_vae(ctx.cfg))
        refuse_stale(vae_path, "ResVAE", diffs, "extract_features.py train-vae --force retrains it")
        LOGGER.info("%s exists for this DDPM: ResVAE training skipped (--force retrains)", vae_path)
        return vae_path
    raw = step_raw(ctx)
    vaes, pcas, logs = fit_compressors(raw, ctx.cfg.vae, ctx.device, ctx.opts.seed, ctx.quiet)
    if ctx.rank == 0:
        info = {"ddpm_sha256": ddpm_sha, "training": logs, "vae": asdict(ctx.cfg.vae)}
        save_compressors(vae_path, "resvae", vaes, info)
        save_compressors(pca_path, "pca", pcas, info)
        report = reconstruction_report(ctx, raw, vaes, pcas, logs)
        atomic_write_text(ctx.out / "vae_report.json", json.dumps(report, indent=1))
        log_report(report)
    barrier()
    return vae_path


def reconstruction_report(ctx: Stage1Context, raw: LatentRepository, vaes, pcas, logs) -> dict[str, Any]:
    """Table III's question on our data: ResVAE vs same-width PCA, on held-out and train images."""
    n = ctx.cfg.vae.eval_images
    heldout = [p for s in ("val", "test") if s in ctx.data.splits for p in ctx.data.images(s)][:n]
    train_rows = [i for i, s in enumerate(raw.splits) if set(s) & set(FITTING_SPLITS)][:n]
    comps = {"resvae": vaes, "pca": pcas}
    held = reconstruction_errors(image_feature_batches(_extractor(ctx), heldout, ctx.cfg.features.batch_size), comps)
    train = reconstruction_errors(repository_feature_batches(raw, train_rows), comps)
    return {"levels": list(LEVEL_NAMES), "latent_channels": ctx.cfg.vae.latent_channels,
            "feature_channels": [lv.channels_feature for lv in raw.levels], "heldout_images": len(heldout),
            "train_images": len(train_rows), "units": "standardised features; 1.0 = predicting the train mean",
            "heldout": held, "train": train, "fitting": logs}


def log_report(report: dict[str, Any]) -> None:
    LOGGER.info("reconstruction MSE (standardised units), %d held-out / %d train images:",
                report["heldout_images"], report["train_images"])
    for i, name in enumerate(report["levels"]):
        LOGGER.info("  %s  %4d -> %3d ch   ResVAE held-out %.4f (train %.4f)   PCA held-out %.4f (train %.4f)", name,
                    report["feature_channels"][i], report["latent_channels"], report["heldout"]["resvae"][i],
                    report["train"]["resvae"][i], report["heldout"]["pca"][i], report["train"]["pca"][i])


def step_build(ctx: Stage1Context) -> LatentRepository:
    """Latents of every requested split, keyed by content, with the weights fingerprinted."""
    kind = ctx.opts.compressor
    root = ctx.out if kind == "resvae" else ctx.out / kind
    prefix = "" if root == ctx.out else "../"
    weights_file = ctx.out / COMPRESSOR_FILES[kind]
    if ctx.opts.ddpm_weights:
        step_train_ddpm(ctx)  # copies the given weights in
    if ctx.opts.vae_weights:
        step_train_vae(ctx)
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file}: no {kind} weights yet; run extract_features.py train-vae first (or pass --vae)")
    _, compressors, _ = load_compressors(weights_file, ctx.device)
    weights = {"ddpm": {"file": f"{prefix}ddpm.pt", "sha256": file_hash(ctx.out / "ddpm.pt")},
               "compressor": {"file": f"{prefix}{weights_file.name}", "sha256": file_hash(weights_file)}}
    splits = ctx.opts.splits or list(ctx.data.splits)
    encoder = LatentEncoder(_extractor(ctx), compressors)
    repo = _build(ctx, root, splits, encoder, {"kind": "latent", "compressor": kind, "weights": weights})
    if ctx.opts.raw:
        step_raw(ctx)  # every split's raw features too, for the no-compression ablation
    return repo


def run_all(opts: Stage1Options) -> dict[str, Any]:
    """Every step in order; finished steps are skipped, an interrupted build resumes. Returns the summary."""
    ctx = prepare(opts)
    times = {}
    for name, step in (("train-ddpm", step_train_ddpm), ("train-vae", step_train_vae), ("build", step_build)):
        t0 = time.time()
        result = step(ctx)
        times[name] = round(time.time() - t0, 1)
        LOGGER.info("%s done in %.1f s", name, times[name])
    summary = result.summary()
    problems = result.verify(check_images=True) if ctx.rank == 0 else []
    return {**summary, "seconds": times, "problems": problems}
