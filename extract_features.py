"""D3N stage 1 (feature preparation): DDPM, raw features, ResVAE, latent repository.

    python extract_features.py all --data data/synth-defects.yaml --ddpm-cfg ddpm-tiny --out runs/features/exp
    python extract_features.py train-ddpm | train-vae | build ...   (one step; finished steps are skipped)
    python extract_features.py inspect --out runs/features/exp      (sizes, settings, VAE-vs-PCA report)
    python extract_features.py verify --out runs/features/exp       (hashes, values, changed images)
    torchrun --nproc_per_node 2 extract_features.py all ...         (ranks share the images)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from d3n_ext.stage1.repository import LatentRepository, RepositoryError
from d3n_ext.stage1.run import Stage1Options, prepare, run_all, step_build, step_train_ddpm, step_train_vae
from utils.checkpoints import CheckpointError
from utils.text import plain_text
from utils.torch_utils import distributed_env

# flag -> config key it overrides (None values leave the preset's value)
OVERRIDES = {
    "iters": "ddpm_train.iterations", "batch_size": "ddpm_train.batch_size", "lr": "ddpm_train.lr",
    "lrf": "ddpm_train.lrf", "schedule": "diffusion.schedule", "ddpm_size": "unet.image_size",
    "timesteps": "features.timesteps", "noise": "features.noise", "noise_seed": "features.noise_seed",
    "combine": "features.combine", "extract_batch": "features.batch_size",
    "latent_channels": "vae.latent_channels", "vae_epochs": "vae.epochs", "vae_batch_size": "vae.batch_size",
    "vae_lr": "vae.lr", "kl_weight": "vae.kl_weight", "vae_reduction": "vae.reduction", "eval_images": "vae.eval_images",
}


def common_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", default="runs/features/exp",
                   help="output folder = the latent repository (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="warnings only, no progress bars")
    return p


def pipeline_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data", required=True, help="data YAML; its train split fits the DDPM and VAE (required)")
    p.add_argument("--ddpm-cfg", default="ddpm-tiny",
                   help="stage-1 preset: a name in d3n_ext/stage1/configs (ddpm-tiny, ddpm-cpu, ddpm-paper, ...) "
                   "or a YAML path (default: %(default)s)")
    p.add_argument("--device", default="",
                   help="device: cpu or a CUDA index such as 0 (default: the first GPU, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of DDPM and VAE training (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="retrain the DDPM / VAE even when weights exist")
    g = p.add_argument_group("DDPM")
    g.add_argument("--iters", type=int, help="DDPM training iterations (default: the preset's)")
    g.add_argument("--batch-size", type=int, help="DDPM batch size, total over ranks (default: the preset's)")
    g.add_argument("--lr", type=float, help="DDPM Adam lr, cosine decay to lr*lrf (default: the preset's)")
    g.add_argument("--lrf", type=float, help="DDPM final lr factor (default: the preset's)")
    g.add_argument("--paper-lr", action="store_true",
                   help="DDPM lr as the paper: 5e-6 decaying to 5e-8 (overrides --lr and --lrf)")
    g.add_argument("--schedule", choices=["linear", "cosine"], help="DDPM beta schedule (default: the preset's)")
    g.add_argument("--ddpm-size", type=int, help="DDPM image size (default: the preset's: 32 tiny, 64 paper)")
    g.add_argument("--ddpm",
                   help="use these DDPM weights (copied into --out) instead of training (default: none, train one)")
    g = p.add_argument_group("features")
    g.add_argument("--timesteps", type=int, nargs="+",
                   help="noise levels t the features are taken at (default: the preset's)")
    g.add_argument("--noise", choices=["per-image", "shared"],
                   help="noise rule: per-image (seeded from the image's pixels) or shared (one for all images) "
                   "(default: the preset's)")
    g.add_argument("--noise-seed", type=int, help="seed of the feature noise (default: the preset's)")
    g.add_argument("--combine", choices=["concat", "mean"],
                   help="how decoded timesteps are combined downstream (default: the preset's)")
    g.add_argument("--extract-batch", type=int, help="images per extraction forward (default: the preset's)")
    g.add_argument("--splits", nargs="+", help="splits to encode (default: all in the data YAML)")
    g.add_argument("--raw", action="store_true", help="also keep raw features of every split in OUT/raw")
    g.add_argument("--compressor", default="resvae", choices=["resvae", "pca"],
                   help="build latents with a ResVAE, or with PCA into OUT/pca (default: %(default)s)")
    g = p.add_argument_group("ResVAE")
    g.add_argument("--latent-channels", type=int, help="latent channels per level (default: the preset's)")
    g.add_argument("--vae-epochs", type=int, help="ResVAE training epochs (default: the preset's)")
    g.add_argument("--vae-batch-size", type=int, help="ResVAE batch size (default: the preset's)")
    g.add_argument("--vae-lr", type=float, help="ResVAE Adam lr (default: the preset's)")
    g.add_argument("--kl-weight", type=float, help="weight of the KL term (default: the preset's)")
    g.add_argument("--vae-reduction", choices=["sum", "mean"],
                   help="sum (the ELBO) or mean of the per-sample error and KL (default: the preset's)")
    g.add_argument("--eval-images", type=int, help="held-out images in the VAE-vs-PCA report (default: the preset's)")
    g.add_argument("--vae",
                   help="use these ResVAE weights (copied into --out) instead of training (default: none, train one)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The subcommands and their flags; parses nothing."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    both = [common_flags(), pipeline_flags()]
    sub.add_parser("all", parents=both, help="train the DDPM and VAE, build and verify the repository")
    sub.add_parser("train-ddpm", parents=both, help="train the DDPM on the train split")
    sub.add_parser("train-vae", parents=both, help="store raw train features, fit ResVAE + PCA, report")
    sub.add_parser("build", parents=both, help="encode every split into the latent repository")
    sub.add_parser("inspect", parents=[common_flags()], help="print a repository's sizes and settings")
    verify = sub.add_parser("verify", parents=[common_flags()], help="check hashes, values and images")
    verify.add_argument("--no-images", action="store_true", help="skip re-hashing the images")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def options(args: argparse.Namespace) -> Stage1Options:
    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items()}
    if args.paper_lr:
        overrides.update({"ddpm_train.lr": 5e-6, "ddpm_train.lrf": 0.01})
    return Stage1Options(data=args.data, out=args.out, config=args.ddpm_cfg, overrides=overrides, device=args.device,
                         seed=args.seed, splits=args.splits, raw=args.raw, compressor=args.compressor,
                         ddpm_weights=args.ddpm, vae_weights=args.vae, force=args.force, quiet=args.quiet)


def print_summary(summary: dict) -> None:
    print(f"repository {summary['root']} ({summary['kind']}): {summary['images']} images, timesteps {summary['timesteps']}")
    for line in summary["levels"]:
        print(f"  {line}")
    print(f"  {summary['bytes_per_image'] / 1024:.1f} KiB per image stored, raw fp32 features "
          f"{summary['raw_fp32_bytes_per_image'] / 1024:.1f} KiB: {summary['ratio']:.2f}x smaller")


def inspect(out: Path) -> int:
    repo = LatentRepository(out)
    print_summary(repo.summary())
    m = repo.manifest
    print(f"  noise {m['features']['noise']} (seed {m['features']['noise_seed']}), DDPM {m['ddpm']}, "
          f"compressor {m.get('compressor', 'none')}")
    report = out / "vae_report.json"
    if report.is_file():
        r = json.loads(report.read_text())
        print(f"  reconstruction MSE, {r['heldout_images']} held-out images ({r['units']}):")
        for i, name in enumerate(r["levels"]):
            print(f"    {name}: ResVAE {r['heldout']['resvae'][i]:.4f}   PCA {r['heldout']['pca'][i]:.4f}")
    return 0


def verify(out: Path, check_images: bool) -> int:
    problems = LatentRepository(out).verify(check_images=check_images)
    for p in problems:
        print(f"PROBLEM: {p}")
    print(f"{out}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = distributed_env()[0]
    logging.basicConfig(level=logging.WARNING if args.quiet or rank else logging.INFO, format="%(message)s")
    try:
        if args.command == "inspect":
            return inspect(Path(args.out))
        if args.command == "verify":
            return verify(Path(args.out), not args.no_images)
        opts = options(args)
        if args.command == "all":
            summary = run_all(opts)
            if rank == 0:
                print_summary(summary)
                print(f"  step times (s): {summary['seconds']}; verify: {summary['problems'] or 'OK'}")
            return 1 if summary["problems"] else 0
        ctx = prepare(opts)
        step = {"train-ddpm": step_train_ddpm, "train-vae": step_train_vae, "build": step_build}[args.command]
        result = step(ctx)
        if args.command == "build" and rank == 0:
            print_summary(result.summary())
        return 0
    except (RepositoryError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {plain_text(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
