"""How an extension joins the core: one interface, registered once, so no script names an extension.

A plug-in is a Python package listed in `plugins.yaml` at the repository root. Importing it registers
its YAML blocks, its training tasks and one `Plugin`. For a model that reads side inputs (SideInput
rows: inputs besides the image) the plug-in that claims the model's YAML supplies them: its
command-line flags, the opened source of the side inputs (`SideInputs`: a dataset for training and
validation, per-frame inputs for prediction) and the input rules they imply. train.py, val.py and
detect.py only ask this module.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from utils.config import read_yaml_mapping, reject_unknown

LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
PLUGINS_FILE = ROOT / "plugins.yaml"
SCRIPTS = ("train", "segment", "distill", "val", "detect")  # "segment": segment/train.py  # what add_flags is told it is adding flags to
MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

FrameInputs = Callable[[Path | None, "object", tuple[int, int]], dict[str, torch.Tensor]]
"""(path, image_bgr, input_hw) -> {side input name: (1, C, H/s, W/s)} for one frame (the predictor's side_fn)."""


@dataclass(frozen=True)
class InputRules:
    """What side inputs demand of the image input; applied once, by `apply_input_rules`."""

    stretch: bool = False  # they describe the whole stretched image: letterbox-free input only (--scale)


class SideInputs(ABC):
    """A model's side inputs, opened once for a run (e.g. a feature repository) and passed down."""

    rules: InputRules = InputRules()

    @abstractmethod
    def dataset(self, model: torch.nn.Module, source: str) -> tuple[type, dict]:
        """(dataset class, its extra keyword arguments) yielding the side inputs with each batch."""

    @abstractmethod
    def frame_inputs(self, model: torch.nn.Module, device: torch.device) -> FrameInputs:
        """The per-frame side inputs for prediction."""

    def describe(self) -> str:
        """Where the side inputs come from, for logs and checkpoints."""
        return type(self).__name__


class Plugin(ABC):
    """What a plug-in tells the core. Subclasses register one instance with `register_plugin`."""

    name: str = ""

    def add_flags(self, parser: argparse.ArgumentParser, script: str) -> None:
        """Add this plug-in's flags to a script's parser (`script` is one of SCRIPTS)."""

    @abstractmethod
    def claims(self, model_yaml: dict) -> bool:
        """Whether this plug-in supplies the side inputs of the model described by `model_yaml`."""

    def flags_given(self, args: argparse.Namespace) -> list[str]:
        """This plug-in's flags the user set (a model it does not claim must not be given them)."""
        return []

    @abstractmethod
    def side_inputs(self, args: argparse.Namespace, model_yaml: dict, source: str) -> SideInputs:
        """Open the side inputs of a claimed model from this plug-in's flags; a ValueError naming `source`
        and the missing flag when they are not given."""

    def training_task(self, args: argparse.Namespace, model_yaml: dict | None, script: str):
        """The task that trains with this plug-in, or None to leave the run to the others (and the core)."""
        return None


_PLUGINS: dict[str, Plugin] = {}


def register_plugin(plugin: Plugin) -> Plugin:
    """Make a plug-in known to the core (called once, when its package is imported)."""
    if not plugin.name:
        raise ValueError(f"{type(plugin).__name__}: a plug-in needs a name")
    _PLUGINS[plugin.name] = plugin
    return plugin


def registered_plugins() -> list[Plugin]:
    return list(_PLUGINS.values())


def plugin_modules(path: Path = PLUGINS_FILE) -> list[str]:
    """The package names `plugins.yaml` lists (none when the file is absent)."""
    if not path.exists():
        return []
    cfg = read_yaml_mapping(path, "a mapping with a 'plugins' list", empty_ok=True)
    reject_unknown(cfg, {"plugins"}, str(path))
    names = cfg.get("plugins") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and MODULE_NAME.match(n) for n in names):
        raise ValueError(f"{path}: 'plugins' must be a list of Python package names, got {names!r}")
    return names


def load_plugins(path: Path = PLUGINS_FILE) -> list[Plugin]:
    """Import every package `plugins.yaml` lists; each registers itself on import."""
    for name in plugin_modules(path):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):  # the listed package itself, not one it imports
                raise ValueError(f"{path}: plug-in {name!r} is not importable (not in this checkout?)") from None
            raise
    return registered_plugins()


def add_plugin_flags(parser: argparse.ArgumentParser, script: str) -> argparse.ArgumentParser:
    if script not in SCRIPTS:
        raise ValueError(f"script {script!r}: expected one of {', '.join(SCRIPTS)}")
    for plugin in registered_plugins():
        plugin.add_flags(parser, script)
    return parser


def plugin_for(model_yaml: dict | None, source: str) -> Plugin | None:
    """The plug-in that claims a model; None for a model that reads nothing but images."""
    claimed = [p for p in registered_plugins() if model_yaml and p.claims(model_yaml)]
    if len(claimed) > 1:
        raise ValueError(f"{source}: claimed by several plug-ins ({', '.join(p.name for p in claimed)})")
    return claimed[0] if claimed else None


def side_inputs_for(model_yaml: dict | None, args: argparse.Namespace, source: str,
                    needs_side_inputs: bool = False) -> SideInputs | None:
    """The opened side inputs of a model (None for a plain one), checked against the flags given.

    `needs_side_inputs` is what the loaded model says (an export knows no YAML): a model that needs them
    but that no plug-in claims is refused here, before any data is read.
    """
    plugin = plugin_for(model_yaml, source)
    if plugin is None:
        check_no_plugin_flags(args, source)
        if needs_side_inputs:
            raise ValueError(f"{source}: this model reads side inputs but no loaded plug-in supplies them "
                             f"(is its package listed in {PLUGINS_FILE.name}?)")
        return None
    return plugin.side_inputs(args, model_yaml, source)


def check_no_plugin_flags(args: argparse.Namespace, source: str) -> None:
    """A model that reads no side inputs must not be given a plug-in's flags (they would be ignored)."""
    for plugin in registered_plugins():
        given = plugin.flags_given(args)
        if given:
            raise ValueError(f"{source}: the model has no side inputs for {plugin.name}; drop {' '.join(given)}")


def apply_input_rules(options, rules: InputRules, source: str) -> None:
    """Set what side inputs demand on parsed flags or an options object with `.scale`, saying so once."""
    if rules.stretch and not options.scale:
        LOGGER.warning("WARNING: %s: the side inputs describe the whole stretched image: turning on --scale", source)
        options.scale = True
