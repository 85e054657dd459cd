"""What a plug-in can rely on from the core: plugins.yaml is read strictly, a registered plug-in adds its
flags to every script, claims the models it supplies, and the core refuses mismatches in one line.

The plug-in here is a throwaway one defined in this file (a "depth map" side input): a second plug-in
joins exactly as d3n_ext does, without touching train.py, val.py or detect.py.
"""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

import train
from engine import plugins
from engine.plugins import (InputRules, Plugin, SideInputs, add_plugin_flags, apply_input_rules, plugin_modules,
                            register_plugin, side_inputs_for)
from engine.tasks import DetectionTask, training_task
from utils.dataloaders import LoadImagesAndLabels

DEPTH_YAML = {"nc": 1, "backbone": [[-1, 1, "SideInput", ["depth", 1, 8]]], "head": []}


class DepthInputs(SideInputs):
    rules = InputRules(stretch=True)

    def dataset(self, model, source):
        return LoadImagesAndLabels, {}

    def frame_inputs(self, model, device):
        return lambda path, image, hw: {"depth": torch.zeros(1, 1, hw[0] // 8, hw[1] // 8)}


class DepthPlugin(Plugin):
    name = "depth"

    def add_flags(self, parser, script):
        parser.add_argument("--depth-maps", default="")

    def claims(self, model_yaml):
        return any(r[2] == "SideInput" and r[3][0] == "depth" for r in model_yaml.get("backbone", []))

    def flags_given(self, args):
        return ["--depth-maps"] if args.depth_maps else []

    def side_inputs(self, args, model_yaml, source):
        if not args.depth_maps:
            raise ValueError(f"{source}: pass --depth-maps")
        return DepthInputs()


@pytest.fixture
def depth_plugin(monkeypatch):
    """DepthPlugin registered beside d3n_ext (plugins.yaml) for one test; the registry is restored afterwards."""
    plugins.load_plugins()
    monkeypatch.setattr(plugins, "_PLUGINS", dict(plugins._PLUGINS))
    return register_plugin(DepthPlugin())


def parse(script: str, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for flag in ("--scale",):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--cfg", default="")
    parser.add_argument("--weights", default="")
    return add_plugin_flags(parser, script).parse_args(list(argv))


def test_plugins_yaml_lists_package_names_only(tmp_path):
    path = tmp_path / "plugins.yaml"
    assert plugin_modules(path) == []  # no file: the plain core
    path.write_text("plugins: [d3n_ext, my_pkg.sub]\n")
    assert plugin_modules(path) == ["d3n_ext", "my_pkg.sub"]
    path.write_text("plugins: ['os; rm -rf /']\n")
    with pytest.raises(ValueError, match="plugins.yaml: 'plugins' must be a list of Python package names"):
        plugin_modules(path)
    path.write_text("plugin: [d3n_ext]\n")
    with pytest.raises(ValueError, match=r"plugins.yaml: unknown keys \['plugin'\]"):
        plugin_modules(path)


def test_a_listed_package_that_is_missing_is_one_line(tmp_path):
    path = tmp_path / "plugins.yaml"
    path.write_text("plugins: [no_such_plugin_pkg]\n")
    with pytest.raises(ValueError, match="plugins.yaml: plug-in 'no_such_plugin_pkg' is not importable"):
        plugins.load_plugins(path)


def test_every_script_gets_the_plugins_flags(depth_plugin):
    args = train.parse_opt(["--depth-maps", "maps/"])
    assert args.depth_maps == "maps/" and args.latents == ""  # both plug-ins' flags, no script edited


def test_a_claimed_model_gets_its_side_inputs_and_their_rules(depth_plugin, caplog):
    """d3n_ext is loaded too: it claims only models whose side inputs its FeatureMapper rows decode."""
    args = parse("val", "--depth-maps", "maps/")
    inputs = side_inputs_for(DEPTH_YAML, args, "depth.pt")
    assert isinstance(inputs, DepthInputs)
    with caplog.at_level(logging.WARNING):
        apply_input_rules(args, inputs.rules, "depth.pt")
    assert args.scale and "turning on --scale" in caplog.text
    with pytest.raises(ValueError, match="depth.pt: pass --depth-maps"):
        side_inputs_for(DEPTH_YAML, parse("val"), "depth.pt")


def test_mismatches_are_refused_in_one_line(depth_plugin):
    plain = {"nc": 1, "backbone": [], "head": []}
    with pytest.raises(ValueError, match="plain.pt: the model has no side inputs for depth; drop --depth-maps"):
        side_inputs_for(plain, parse("val", "--depth-maps", "maps/"), "plain.pt")
    with pytest.raises(ValueError, match="export.onnx: this model reads side inputs but no loaded plug-in"):
        side_inputs_for(None, parse("val"), "export.onnx", needs_side_inputs=True)
    with pytest.raises(ValueError, match="no loaded plug-in provides pose runs"):
        training_task(parse("train"), plain, "pose")


def test_two_plugins_claiming_one_model_is_an_error(depth_plugin):
    class Greedy(DepthPlugin):
        name = "greedy"

        def add_flags(self, parser, script):
            pass

    register_plugin(Greedy())
    with pytest.raises(ValueError, match="m.pt: claimed by several plug-ins"):
        side_inputs_for(DEPTH_YAML, parse("val"), "m.pt")


def test_a_plain_run_trains_the_detection_task():
    assert type(training_task(parse("train", "--cfg", "yolov5n.yaml"), {"nc": 1, "backbone": [], "head": []})) \
        is DetectionTask
