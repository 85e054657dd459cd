"""Stage-1 presets: found by name in d3n_ext/stage1/configs/, every mistake a one-line error naming the file."""

from __future__ import annotations

import pytest

from d3n_ext.stage1.config import CONFIG_DIR, load_stage1_config, resolve_config_path


def test_presets_resolve_by_name_with_or_without_suffix():
    assert resolve_config_path("ddpm-tiny") == resolve_config_path("ddpm-tiny.yaml") == CONFIG_DIR / "ddpm-tiny.yaml"
    with pytest.raises(FileNotFoundError, match=r"ddpm-huge: stage-1 config not found \(presets: \['ddpm-cpu', "):
        resolve_config_path("ddpm-huge")


@pytest.mark.parametrize("text, message", [
    ("unet: {image_size: 32}\ntraining: {}\n", r"bad\.yaml: unknown sections \['training'\] \(known: \['ddpm_train', "),
    ("vae: {latent_channel: 4}\n", r"bad\.yaml: vae: unknown keys \['latent_channel'\] \(known: \["),
    ("vae: [4]\n", r"bad\.yaml: vae: expected a mapping$"),
    ("- unet\n", r"bad\.yaml: expected a mapping of sections \['ddpm_train', "),
    ("unet: {image_size: 32\n", r"bad\.yaml: not valid YAML"),
])
def test_a_bad_preset_is_named_with_its_section_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_stage1_config(path)


def test_overrides_reach_their_section():
    cfg = load_stage1_config("ddpm-tiny", {"vae.epochs": 3, "features.timesteps": None})
    assert cfg.vae.epochs == 3 and cfg.features.timesteps == load_stage1_config("ddpm-tiny").features.timesteps
