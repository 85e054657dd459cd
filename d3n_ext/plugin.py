"""D3N's one join with the core (`engine.plugins`): the --latents flag, the feature repository as the
side inputs of a hybrid teacher, and the teacher and distillation tasks.

A model D3N claims is one whose YAML has SideInput rows decoded by FeatureMapper rows (the hybrid teacher). Its side inputs are the
latents of a feature repository (stage 1), opened once here and handed to the dataset, the predictor
and the training task. The latents describe the whole stretched image, hence the --scale rule.
"""

from __future__ import annotations

import argparse

from d3n_ext.fusion.binding import side_inputs_of_yaml
from d3n_ext.fusion.blocks import row_role
from d3n_ext.distill import DistillationTask, add_distill_flags
from d3n_ext.fusion.task import D3NSegmentationTask, D3NTask
from d3n_ext.fusion.teacher_inputs import RepositoryInputs
from engine.plugins import Plugin, register_plugin
from models.yolo import reads_side_inputs

LATENTS_HELP = {
    "train": "feature repository (extract_features.py) read by a D3N model YAML: trains the hybrid teacher "
             "(default: none, for a plain YOLOv5 model)",
    "segment": "feature repository read by a D3N segmentation YAML: trains the hybrid segmentation teacher "
               "(default: none, for a plain YOLOv5-seg model)",
    "distill": "feature repository the teacher reads (default: the one it was trained with)",
    "val": "feature repository of a D3N teacher (default: none, for a plain YOLOv5 model)",
    "detect": "feature repository of a D3N teacher; images not in it are encoded online "
              "(default: none, for a plain YOLOv5 model)",
}


class D3NPlugin(Plugin):
    name = "d3n"

    def add_flags(self, parser: argparse.ArgumentParser, script: str) -> None:
        parser.add_argument("--latents", default="", help=LATENTS_HELP[script])
        if script == "distill":
            add_distill_flags(parser)

    def claims(self, model_yaml: dict) -> bool:
        """A model with side inputs and FeatureMapper rows (blocks of role 'mapper') to decode them."""
        rows = [*(model_yaml.get("backbone") or []), *(model_yaml.get("head") or [])]
        return reads_side_inputs(model_yaml) and any(row_role(r) == "mapper" for r in rows)

    def flags_given(self, args: argparse.Namespace) -> list[str]:
        return ["--latents"] if getattr(args, "latents", "") else []

    def side_inputs(self, args: argparse.Namespace, model_yaml: dict, source: str) -> RepositoryInputs:
        if not getattr(args, "latents", ""):
            raise ValueError(f"{source}: this model reads side inputs {sorted(side_inputs_of_yaml(model_yaml))} "
                             "(a D3N teacher): pass --latents <feature repository>")
        return RepositoryInputs.open(args.latents)

    def training_task(self, args: argparse.Namespace, model_yaml: dict | None, script: str):
        if script == "distill":
            return DistillationTask.from_flags(args)
        if model_yaml is not None and self.claims(model_yaml):
            inputs = self.side_inputs(args, model_yaml, args.cfg or args.weights)
            if script == "segment":
                return D3NSegmentationTask(inputs, not args.noplots, args.mask_ratio, not args.no_overlap)
            return D3NTask(inputs, plots=not args.noplots)
        return None


register_plugin(D3NPlugin())
