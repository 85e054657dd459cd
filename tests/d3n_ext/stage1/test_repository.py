import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from d3n_ext.stage1.features import OnlineLatentEncoder, load_feature_decoders, read_image
from d3n_ext.stage1.repository import (CorruptRepositoryError, LatentRepository, MissingLatentError,
                                       StaleRepositoryError, content_key)
from tests.d3n_ext.stage1_fixtures import repo_copy, one_thread, stage1_run  # noqa: F401 (fixtures)
from utils.files import file_hash

pytestmark = pytest.mark.usefixtures("one_thread")


def train_images(run):
    return sorted((run["data"].parent / "images" / "train").glob("*.png"))


def test_lookup_gives_float16_latents_per_level(stage1_run):
    repo = LatentRepository(stage1_run["out"])
    assert [lv.stride_hint for lv in repo.levels] == [8, 16, 32] and repo.timesteps == [100, 150, 250]
    assert [lv.hw for lv in repo.levels] == [(32, 32), (16, 16), (8, 8)] and len(repo) == 7
    latents = repo.lookup(train_images(stage1_run)[0])
    for z, lv in zip(latents, repo.levels):
        assert z.dtype == np.float16 and z.shape == (3, lv.channels_latent, *lv.hw) and np.isfinite(z).all()
    path = train_images(stage1_run)[1]
    assert all(np.array_equal(a, b) for a, b in zip(repo.lookup(path), repo.lookup_key(content_key(path.read_bytes()))))


def test_repository_is_at_least_eight_times_smaller_than_raw_fp32(stage1_run):
    summary = LatentRepository(stage1_run["out"]).summary()
    assert summary["ratio"] >= 8
    raw = LatentRepository(stage1_run["out"] / "raw")
    assert raw.kind == "raw" and [lv.channels_latent for lv in raw.levels] == [lv.channels_feature for lv in raw.levels]


def test_online_encoder_reproduces_the_stored_latents(stage1_run):
    repo = LatentRepository(stage1_run["out"])
    encoder = OnlineLatentEncoder(stage1_run["out"])
    path = train_images(stage1_run)[2]
    online = encoder(read_image(path))
    again = encoder(read_image(path))
    for a, b, stored in zip(online, again, repo.lookup(path)):
        assert torch.equal(a, b)  # deterministic: same image, same latents
        assert a.dtype == torch.float16 and a.shape == stored.shape
        assert np.allclose(a.float().numpy(), stored.astype(np.float32), atol=2e-3)


def test_one_pixel_changes_the_key_and_the_lookup_fails_as_stale(stage1_run, tmp_path):
    repo = LatentRepository(stage1_run["out"])
    src = train_images(stage1_run)[0]
    img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    img[0, 0] ^= 1
    changed = tmp_path / "changed.png"
    cv2.imwrite(str(changed), img)
    assert file_hash(changed) != file_hash(src)
    with pytest.raises(MissingLatentError, match=f"{changed}.*not in the feature repository"):
        repo.lookup(changed)
    with pytest.raises(MissingLatentError, match="not in the feature repository"):
        repo.lookup_key("0" * 64)


def test_an_edited_dataset_image_is_a_stale_repository(stage1_run, repo_copy, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(stage1_run["data"].parent, data)
    manifest = json.loads((repo_copy / "manifest.json").read_text())
    manifest["data"]["root"] = str(data)  # point the copy at a private copy of the images
    (repo_copy / "manifest.json").write_text(json.dumps(manifest))
    repo = LatentRepository(repo_copy)
    victim = data / "images" / "train" / "train0.png"
    img = cv2.imread(str(victim), cv2.IMREAD_UNCHANGED)
    img[5, 5] = 255 - img[5, 5]
    cv2.imwrite(str(victim), img)
    with pytest.raises(StaleRepositoryError, match=f"{victim}: changed since"):
        repo.lookup(victim)
    assert any("1 images changed" in p for p in repo.verify())


def test_truncated_array_is_reported_when_opening(repo_copy):
    level = repo_copy / "level0.npy"
    level.write_bytes(level.read_bytes()[:-100])
    with pytest.raises(CorruptRepositoryError, match="level0.npy: truncated"):
        LatentRepository(repo_copy)


def test_altered_bytes_and_missing_files_are_reported(repo_copy):
    level = repo_copy / "level1.npy"
    data = bytearray(level.read_bytes())
    data[-10] ^= 0xFF
    level.write_bytes(bytes(data))
    problems = LatentRepository(repo_copy).verify(check_images=False)
    assert any("level1.npy: altered" in p for p in problems)
    (repo_copy / "index.json").write_text("{}")
    with pytest.raises(CorruptRepositoryError, match="index.json: altered"):
        LatentRepository(repo_copy)
    (repo_copy / "manifest.json").unlink()
    with pytest.raises(CorruptRepositoryError, match="manifest missing"):
        LatentRepository(repo_copy)


def test_replaced_weights_make_the_decoders_refuse(repo_copy):
    shutil.copyfile(repo_copy / "pca.pt", repo_copy / "vae.pt")
    with pytest.raises(StaleRepositoryError, match="compressor weights differ"):
        load_feature_decoders(repo_copy)
    with pytest.raises(StaleRepositoryError):
        OnlineLatentEncoder(repo_copy)
    assert any("weights differ" in p for p in LatentRepository(repo_copy).verify(check_images=False))


def test_feature_decoders_are_frozen_and_restore_feature_channels(stage1_run):
    repo = LatentRepository(stage1_run["out"])
    decoders = load_feature_decoders(stage1_run["out"])
    latents = repo.lookup(train_images(stage1_run)[0])
    for dec, z, lv in zip(decoders, latents, repo.levels):
        dec.train()  # stays frozen
        assert not dec.training and not any(p.requires_grad for p in dec.parameters())
        y = dec(torch.from_numpy(z)[None])  # (1, T, C_latent, h, w) -> (1, T, C_feature, h, w)
        assert y.shape == (1, 3, lv.channels_feature, *lv.hw) and y.dtype == torch.float32
        assert torch.equal(dec(torch.from_numpy(z)), y[0])  # (T, C, h, w) as a batch of T


class LatentDataset(Dataset):
    def __init__(self, repo, paths):
        self.repo, self.paths = repo, paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return [torch.from_numpy(z) for z in self.repo.lookup(self.paths[i])]


def test_forked_dataloader_workers_read_the_same_latents(stage1_run):
    repo = LatentRepository(stage1_run["out"])
    paths = train_images(stage1_run)
    direct = [repo.lookup(p) for p in paths]
    loader = DataLoader(LatentDataset(repo, paths), batch_size=2, num_workers=2)
    batches = list(loader)
    for level in range(3):
        got = torch.cat([b[level] for b in batches]).numpy()
        assert np.array_equal(got, np.stack([d[level] for d in direct]))
