import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from d3n_ext.stage1.features import encoder_from_repository, load_feature_decoders, make_noise
from d3n_ext.stage1.repository import LatentRepository
from d3n_ext.stage1.config import load_stage1_config
from d3n_ext.stage1.repository_builder import LevelSpec, batch_range, build_repository, plan_images
from d3n_ext.stage1.reuse import asked_ddpm, differences, images_fingerprint, recorded_ddpm
from extract_features import main
from tests.d3n_ext.stage1_fixtures import cli_args, one_thread, repo_copy, stage1_run  # noqa: F401 (fixture)
from utils.checkpoints import load_checkpoint
from utils.data_config import load_data_config

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[3]
FILES = ("manifest.json", "index.json", "level0.npy", "level1.npy", "level2.npy")


def test_all_writes_weights_report_and_a_verified_repository(stage1_run, capsys):
    out = stage1_run["out"]
    assert {"ddpm.pt", "vae.pt", "pca.pt", "vae_report.json", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert main(["verify", "--out", str(out)]) == 0
    assert main(["inspect", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "KiB per image stored" in text and "ResVAE" in text and "PCA" in text


def test_rerunning_all_skips_finished_steps(stage1_run):
    out = stage1_run["out"]
    stamps = {f: (out / f).stat().st_mtime_ns for f in ("ddpm.pt", "vae.pt", "level0.npy", "manifest.json")}
    assert main(cli_args("all", stage1_run["data"], stage1_run["cfg"], out)) == 0
    assert stamps == {f: (out / f).stat().st_mtime_ns for f in stamps}


def test_missing_data_yaml_is_a_one_line_error(stage1_run, tmp_path, capsys):
    assert main(cli_args("build", tmp_path / "nope.yaml", stage1_run["cfg"], tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nope.yaml: data YAML not found" in err.strip().splitlines()[-1]


def test_pca_and_raw_repositories_for_the_ablations(stage1_run, tmp_path):
    out = tmp_path / "repo"
    shutil.copytree(stage1_run["out"], out)
    assert main(cli_args("build", stage1_run["data"], stage1_run["cfg"], out, "--compressor", "pca", "--raw")) == 0
    pca, raw, vae = LatentRepository(out / "pca"), LatentRepository(out / "raw"), LatentRepository(out)
    assert pca.manifest["compressor"] == "pca" and pca.verify() == []
    assert raw.keys == vae.keys  # --raw: every split, not only train
    feats = load_feature_decoders(out / "raw")[0](torch.from_numpy(raw.lookup_key(raw.keys[0])[0]))
    assert torch.equal(feats, torch.from_numpy(raw.lookup_key(raw.keys[0])[0]).float())  # identity decoder


class Interrupt(Exception):
    pass


def _build(run, out, encode):
    """Rebuild the fixture's latent repository (same weights) into `out` with a given encode()."""
    repo = LatentRepository(run["out"])
    data = load_data_config(run["data"])
    plan = plan_images(data.root, {s: data.images(s) for s in ("train", "val")}, quiet=True)
    levels = [LevelSpec(lv.name, lv.channels_latent, lv.channels_feature, lv.hw, lv.stride_hint) for lv in repo.levels]
    base = {k: v for k, v in repo.manifest.items() if k in ("kind", "compressor", "weights", "timesteps")}
    return build_repository(out, plan, levels, encode, base, batch_size=2, quiet=True)


def test_an_interrupted_build_resumes_where_it_stopped(stage1_run, tmp_path):
    encoder = encoder_from_repository(LatentRepository(stage1_run["out"]))
    calls = []

    def flaky(images):
        if len(calls) == 2:
            raise Interrupt
        calls.append(len(images))
        return encoder(images)

    with pytest.raises(Interrupt):
        _build(stage1_run, tmp_path / "a", flaky)
    assert not (tmp_path / "a" / "manifest.json").exists()  # an unfinished build is not a repository
    calls.clear()
    assert _build(stage1_run, tmp_path / "a", encoder) is True
    counted = []
    assert _build(stage1_run, tmp_path / "b", lambda ims: counted.append(1) or encoder(ims)) is True
    assert len(counted) == 4  # 7 images in batches of 2
    for f in FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert _build(stage1_run, tmp_path / "b", None) is False  # up to date: nothing is encoded


def test_resume_encodes_only_the_missing_batches(stage1_run, tmp_path):
    encoder = encoder_from_repository(LatentRepository(stage1_run["out"]))
    seen = []

    def stop_after_three(images):
        if len(seen) == 3:
            raise Interrupt
        seen.append(len(images))
        return encoder(images)

    with pytest.raises(Interrupt):
        _build(stage1_run, tmp_path / "r", stop_after_three)
    seen.clear()
    _build(stage1_run, tmp_path / "r", lambda ims: seen.append(len(ims)) or encoder(ims))
    assert seen == [1]  # rows 0..5 were kept; only the last batch (row 6) is encoded again


def test_ranks_take_contiguous_runs_of_whole_batches():
    assert [batch_range(7, 2, r, 2) for r in range(2)] == [(0, 4), (4, 7)]
    assert [batch_range(3, 4, r, 2) for r in range(2)] == [(0, 0), (0, 3)]


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    """Run python with one thread per process (as torchrun's workers); kill the whole group on a hang."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_torchrun_two_processes_build_the_same_repository(stage1_run, tmp_path):
    run, weights = stage1_run, ["--ddpm", str(stage1_run["out"] / "ddpm.pt"), "--vae", str(stage1_run["out"] / "vae.pt")]
    single = _cli(["extract_features.py", *cli_args("build", run["data"], run["cfg"], tmp_path / "one", *weights)])
    assert single.returncode == 0, single.stderr[-2000:]
    dist = _cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "extract_features.py", *cli_args("build", run["data"], run["cfg"], tmp_path / "two", *weights)])
    assert dist.returncode == 0, dist.stderr[-2000:]
    for f in FILES:  # same thread count per process: identical bytes
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    # the in-process build used 2 threads: equal up to float16 rounding of thread-dependent sums
    a, b = LatentRepository(run["out"]), LatentRepository(tmp_path / "two")
    for key in a.keys:
        for x, y in zip(a.lookup_key(key), b.lookup_key(key)):
            assert np.allclose(x.astype(np.float32), y.astype(np.float32), atol=2e-3)


def test_noise_rules_are_reproducible_and_follow_the_pixels():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] ^= 1
    shape = (3, 8, 8)
    assert torch.equal(make_noise("per-image", 0, a, shape), make_noise("per-image", 0, a.copy(), shape))
    assert not torch.equal(make_noise("per-image", 0, a, shape), make_noise("per-image", 0, b, shape))
    assert not torch.equal(make_noise("per-image", 0, a, shape), make_noise("per-image", 1, a, shape))
    assert torch.equal(make_noise("shared", 0, a, shape), make_noise("shared", 0, b, shape))


def _last_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_finished_weights_trained_otherwise_are_refused_not_reused(stage1_run, repo_copy, tmp_path, capsys):
    """A rerun that asks for other DDPM or ResVAE settings than the folder's weights were trained with stops
    with one line naming the file and the setting; nothing in the folder is touched."""
    stamps = {f: (repo_copy / f).stat().st_mtime_ns for f in ("ddpm.pt", "vae.pt", "manifest.json")}
    longer = tmp_path / "longer.yaml"
    longer.write_text(stage1_run["cfg"].read_text().replace("iterations: 2,", "iterations: 3,"))
    assert main(cli_args("all", stage1_run["data"], longer, repo_copy)) == 2
    line = _last_line(capsys)
    assert "ddpm.pt" in line and "ddpm_train.iterations 2 -> 3" in line and "--force" in line
    wider = tmp_path / "wider.yaml"
    wider.write_text(stage1_run["cfg"].read_text().replace("latent_channels: 4,", "latent_channels: 5,"))
    assert main(cli_args("all", stage1_run["data"], wider, repo_copy)) == 2
    line = _last_line(capsys)
    assert "vae.pt" in line and "latent_channels 4 -> 5" in line
    assert stamps == {f: (repo_copy / f).stat().st_mtime_ns for f in stamps}


def test_a_ddpm_fitted_on_other_images_is_refused(stage1_run, repo_copy, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(stage1_run["data"].parent, data)
    next(iter(sorted((data / "images" / "train").iterdir()))).unlink()  # one train image fewer
    (data / "data.yaml").write_text(stage1_run["data"].read_text().replace(str(stage1_run["data"].parent), str(data)))
    assert main(cli_args("all", data / "data.yaml", stage1_run["cfg"], repo_copy)) == 2
    assert "ddpm.pt" in (line := _last_line(capsys)) and "images_sha256" in line and "train_images 5 -> 4" in line


def test_the_images_print_ignores_order_and_folder(stage1_run, tmp_path):
    images = sorted((stage1_run["data"].parent / "images" / "train").iterdir())
    moved = tmp_path / "elsewhere"
    shutil.copytree(images[0].parent, moved)
    assert images_fingerprint(images) == images_fingerprint(sorted(moved.iterdir(), reverse=True))
    assert images_fingerprint(images) != images_fingerprint(images[1:])


def test_an_older_ddpm_checkpoint_is_compared_on_what_its_log_recorded(stage1_run):
    ckpt = load_checkpoint(stage1_run["out"] / "ddpm.pt", expect="ddpm")
    info = {k: ckpt["info"][k] for k in ("iterations", "train_images", "seconds", "lr", "lrf")}  # before the record
    older = {**ckpt, "info": info}
    cfg = load_stage1_config(stage1_run["cfg"])
    images = sorted((stage1_run["data"].parent / "images" / "train").iterdir())
    assert differences(recorded_ddpm(older), asked_ddpm(cfg, images, seed=0)) == []
    longer = load_stage1_config(stage1_run["cfg"], {"ddpm_train.iterations": 9})
    assert differences(recorded_ddpm(older), asked_ddpm(longer, images, seed=0)) == ["ddpm_train.iterations 2 -> 9"]
