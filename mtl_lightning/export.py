"""``mtl-lightning export``: a trained checkpoint as an inference model for deployment.

::

    mtl-lightning export --ckpt_path runs/x/checkpoints/last.ckpt --output model.onnx \\
        [--postprocess false] [--image_size 128] [--torchscript model.pt]

The exported model is the shared trunk (backbone, neck, or whichever ``model.architecture``
the run used) and every task head. Its input ``image`` is float32 ``[B, 3, S, S]`` in [0, 1],
as the evaluation transforms give it (resize to ``S``, scale to [0, 1]); the graph itself
subtracts the mean and divides by the std the checkpoint was trained with (its backbone's
statistics, or ``model.image_mean``/``image_std``), so a deployment feeds plain RGB / 255. The
batch size is dynamic; ``S`` is fixed at export: ``--image_size``, by default the training
``image_size`` of the data module, which the checkpoint holds (``datamodule_hyper_parameters``;
a checkpoint written before the data modules saved theirs falls back on the run's
``config.yaml`` next to it).

Outputs, by name (``<task>_<key>`` for a task whose head returns several tensors):

* ``--postprocess false``: each head's raw output: ``classification`` [B, C] logits,
  ``segmentation`` [B, K, S, S] logits, ``detection_heatmap`` [B, C, S/4, S/4] logits and
  ``detection_box`` [B, 4, S/4, S/4] box parameters.
* ``--postprocess true`` (default): ``classification_scores`` [B, C] probabilities (softmax;
  sigmoid for a multi-label head) and ``classification_labels`` [B] (single-label);
  ``segmentation_labels`` [B, S, S] class ids; ``detection_boxes`` [B, k, 4] (xyxy pixels of
  the ``S`` x ``S`` input), ``detection_scores`` [B, k] and ``detection_labels`` [B, k]: the
  ``k = pre_nms_topk`` highest heatmap peaks, exactly the candidates the Python
  ``Detection.postprocess`` starts from (cells that are not peaks score 0 and come in no
  particular order). Its last two steps, the score threshold and
  class-wise NMS, give a different number of boxes per image and stay outside the graph: run
  ``torchvision.ops.batched_nms`` (or the runtime's NMS) on these outputs. Each task does its
  own (:meth:`~mtl_lightning.tasks.base.Task.export_outputs`); one that defines none (depth,
  normals) exports its raw outputs.

ONNX goes through PyTorch's ``torch.export``-based exporter (``--exporter dynamo``, needs
``onnxscript``) or the older TorchScript-based one (``--exporter legacy``). ``--torchscript``
also writes a traced TorchScript module with the same outputs (as a tuple, in the order of
``InferenceModel.output_names``). Install the exporters with ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule
from torch import nn

from mtl_lightning.checkpoint_io import read_checkpoint
from mtl_lightning.commands import tool_main
from mtl_lightning.models.input_normalization import fill_legacy_statistics
from mtl_lightning.module import MultiTaskModule

DEFAULT_IMAGE_SIZE = 128
Outputs = dict[str, torch.Tensor]


def _flatten(name: str, output: Any) -> Outputs:
    if isinstance(output, torch.Tensor):
        return {name: output}
    return {f"{name}_{key}": value for key, value in output.items()}


class InferenceModel(nn.Module):
    """The trunk and heads of a :class:`MultiTaskModule` with named tensor outputs.

    Holds the module's ``architecture`` and ``tasks`` (plain ``nn.Module`` s) rather than the
    LightningModule itself, whose trainer-bound attributes the tracers cannot look at.
    """

    def __init__(self, module: MultiTaskModule, postprocess: bool = True) -> None:
        super().__init__()
        self.normalize = module.normalize
        self.architecture = module.architecture
        self.tasks = module.tasks
        self.postprocess = postprocess
        self.output_names: list[str] = []  # filled by the first forward (see ``describe``)

    def named_outputs(self, image: torch.Tensor) -> Outputs:
        """Outputs for ``image`` in [0, 1] (normalised here, as in training)."""
        image = self.normalize(image)
        features = self.architecture(image).features
        size = (image.shape[-2], image.shape[-1])
        named: Outputs = {}
        for name, task in self.tasks.items():
            output = task(features[name], size)
            if self.postprocess:
                output = task.export_outputs(output)
            named.update(_flatten(name, output))
        return named

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.named_outputs(image).values())

    def describe(self, image: torch.Tensor) -> list[str]:
        """Run once on ``image`` and record the output names (in ``forward``'s order)."""
        with torch.no_grad():
            self.output_names = list(self.named_outputs(image))
        return self.output_names


def load_module(ckpt_path: str | Path) -> MultiTaskModule:
    """The model of a training checkpoint, on the CPU, in eval mode (``weights_only`` load).

    The balancer is not part of the inference model: its state (DWA history, uncertainty
    weights, ...) is dropped, so a checkpoint trained with any balancer loads.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path '{ckpt_path}' is not a checkpoint file.")
    checkpoint = read_checkpoint(path)  # one sentence for a file that is no checkpoint of ours
    with warnings.catch_warnings():  # the balancer's keys, dropped on purpose just below
        warnings.filterwarnings("ignore", message="Found keys that are not in the model")
        module = MultiTaskModule.load_from_checkpoint(
            path, map_location="cpu", weights_only=True, strict=False)
    fill_legacy_statistics(checkpoint["state_dict"])
    weights = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("balancer.")}
    missing, unexpected = module.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("balancer.")]
    if missing or unexpected:
        raise ValueError(f"'{ckpt_path}' does not fit the model its hyper-parameters describe: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}.")
    return module.eval()


def _square_side(size: Any, source: str) -> int | None:
    """One side of a square ``image_size`` (an int, or equal ``[height, width]``)."""
    if not size:
        return None
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"The run's image_size is {list(size)} ({source}), not a square; "
                             "the export is square: give --image_size.")
        size = size[0]
    return int(size)


def run_image_size(ckpt_path: str | Path) -> int | None:
    """The data module's ``image_size`` the checkpoint was trained with: from the checkpoint's
    ``datamodule_hyper_parameters``, else (an older checkpoint) from
    ``data.init_args.image_size`` of the run's ``config.yaml`` near it; ``None`` if neither
    says."""
    checkpoint = read_checkpoint(ckpt_path)
    saved = checkpoint.get(LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY) or {}
    if "image_size" in saved:
        return _square_side(saved["image_size"], f"the data module saved in '{ckpt_path}'")
    for folder in list(Path(ckpt_path).resolve().parents)[:2]:
        config = folder / "config.yaml"
        if config.is_file():
            data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
            size = (data.get("init_args") or {}).get("image_size") if isinstance(
                data, dict) else None
            return _square_side(size, str(config))
    return None


def export(
    ckpt_path: str | Path,
    output: str | Path,
    postprocess: bool = True,
    image_size: int | None = None,
    torchscript: str | Path | None = None,
    exporter: Literal["dynamo", "legacy"] = "dynamo",
) -> list[str]:
    """Write the checkpoint's inference model to ONNX (and TorchScript); returns the output
    names."""
    module = load_module(ckpt_path)
    size = image_size or run_image_size(ckpt_path) or DEFAULT_IMAGE_SIZE
    model = InferenceModel(module, postprocess=postprocess).eval()
    example = torch.zeros(2, 3, size, size)
    names = model.describe(example)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(
                model, (example,), str(output), dynamo=True, input_names=["image"],
                output_names=names, dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
                verbose=False,
            )
        else:
            axes = {name: {0: "batch"} for name in ["image", *names]}
            torch.onnx.export(model, (example,), str(output), dynamo=False,
                              input_names=["image"], output_names=names, dynamic_axes=axes,
                              opset_version=17)
        if torchscript is not None:
            Path(torchscript).parent.mkdir(parents=True, exist_ok=True)
            torch.jit.save(torch.jit.trace(model, example), str(torchscript))
    return names


def parser() -> ArgumentParser:
    """The options of ``mtl-lightning export`` (a sub-command of :mod:`mtl_lightning.commands`)."""
    parser = ArgumentParser(prog="mtl-lightning export",
                            description="Export a checkpoint's model to ONNX / TorchScript.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="Training checkpoint.")
    parser.add_argument("--output", type=str, required=True, help="ONNX file to write.")
    parser.add_argument("--postprocess", type=bool, default=True,
                        help="Probabilities, class maps and top-k detections instead of logits.")
    parser.add_argument("--image_size", type=int | None, default=None,
                        help="Input size S (default: the run's data.init_args.image_size).")
    parser.add_argument("--torchscript", type=str | None, default=None,
                        help="Also write a traced TorchScript module to this file.")
    parser.add_argument("--exporter", type=Literal["dynamo", "legacy"], default="dynamo",
                        help="PyTorch's ONNX exporter: torch.export-based or TorchScript-based.")
    return parser


def run(args: Namespace) -> int:
    """Export with parsed options ``args``; returns the exit code. Errors the user can fix
    are one line on stderr, exit code 2."""
    try:
        names = export(args.ckpt_path, args.output, postprocess=args.postprocess,
                       image_size=args.image_size, torchscript=args.torchscript,
                       exporter=args.exporter)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as error:
        print(f"mtl-lightning: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.output} (input: image; outputs: {', '.join(names)})"
          + (f" and {args.torchscript}" if args.torchscript else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``mtl-lightning export`` with ``argv`` (its options); returns the exit code."""
    return tool_main("export", argv)


if __name__ == "__main__":
    raise SystemExit(main())
