"""A trained net taken where PyTorch is not: ONNX (checked by onnxruntime) or a ``torch.export`` program.

The consolidated net (the full net's two towers as one process's ``groups=2`` net, or the
half net) is exported in eval mode. Its input is an NCHW float32 batch of crops, the
run's mean image subtracted from 0..255 pixels (``alexnet_mp.use.evaluate.eval_augment``);
the batch size is dynamic. The ONNX file's metadata records that convention, the class
names, the crop size, the checkpoint it came from, the provenance and the mean image's
values (``mean_image``: JSON, [3, S, S]).

LRN (sec. 3.3) becomes ONNX's own ``LRN`` operator, whose square sum is scaled by
``alpha / size`` as ``torch.nn.functional.local_response_norm`` and
:func:`alexnet_mp.net.lrn.local_response_norm` do, so the constants go over unchanged
(``tests/test_use.py`` checks one against the other on large activations, where a
wrong scale shows). Each tower's channel block is normalised alone by folding the towers
into the batch around the operator. The net is exported as a copy built with that LRN
(``AlexNet(lrn_function=onnx_lrn)``).

Exporter: ``torch.onnx.export(dynamo=True)``. The TorchScript exporter (``dynamo=False``,
deprecated since torch 2.9) traced the hand-written LRN's in-place shifted adds wrongly
(docs/using.md); the ``torch.export`` path gets them right and maps our
LRN custom op through ``custom_translation_table`` (needs ``onnxscript``, torch >= 2.6).

    python launch/export.py checkpoint=RUN_DIR out=alexnet.onnx     # or out=alexnet.pt2
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from alexnet_mp.job import provenance
from alexnet_mp.errors import UserError
from alexnet_mp.use.evaluate import load_trained_model
from alexnet_mp.io import atomic_write
from alexnet_mp.net.model import AlexNet
from alexnet_mp.use.predict import check_output_path, class_names

__all__ = ["onnx_lrn", "export_onnx", "export_program", "metadata", "export_model"]

log = logging.getLogger("alexnet_mp")
OPSET = 18
INPUT_CONVENTION = ("NCHW float32 crops of RGB pixels in 0..255 with the training run's mean image subtracted "
                    "(shorter side to image_size, central square, then the centre crop: sec. 2 and 5)")


@torch.library.custom_op("alexnet_mp::lrn", mutates_args=())
def _lrn_op(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return torch.nn.functional.local_response_norm(x, size, alpha, beta, k)


@_lrn_op.register_fake
def _(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return torch.empty_like(x)


def _lrn_translation():
    from onnxscript import opset18 as op

    def lrn(x, size: int, alpha: float, beta: float, k: float):
        return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)
    return lrn


def onnx_lrn(x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
             groups: int = 1) -> Tensor:
    """:func:`alexnet_mp.net.lrn.local_response_norm` as one op that exports to ONNX ``LRN``:
    the ``groups`` channel blocks folded into the batch so no window crosses a tower."""
    n, c, h, w = x.shape
    return _lrn_op(x.reshape(n * groups, c // groups, h, w), size, alpha, beta, k).reshape(n, c, h, w)


def _with_onnx_lrn(net: torch.nn.Module) -> torch.nn.Module:
    """The same net with :func:`onnx_lrn` as its LRN (its weights, a new module); other modules as they are."""
    if not isinstance(net, AlexNet):
        return net
    exportable = AlexNet(net.spec, input_size=net.input_size, geometry=net.geometry, lrn=net.lrn_option,
                         tower=net.tower, exchange=net.exchange, init=None, lrn_function=onnx_lrn)
    exportable.load_state_dict(net.state_dict())
    return exportable.to(next(net.parameters()))


def _example(net: torch.nn.Module, crop: int) -> Tensor:
    return torch.zeros(2, 3, crop, crop, dtype=next(net.parameters()).dtype)


def export_onnx(net: torch.nn.Module, crop: int) -> bytes:
    """The eval-mode net as ONNX bytes with a dynamic batch (input ``crops``, output ``logits``)."""
    batch = torch.export.Dim("batch", min=1)
    net = _with_onnx_lrn(net)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")  # the exporter's deprecation notes are not the user's business
        path = Path(tmp) / "net.onnx"
        torch.onnx.export(net.eval(), (_example(net, crop),), str(path), dynamo=True, opset_version=OPSET,
                          input_names=["crops"], output_names=["logits"], dynamic_shapes=({0: batch},),
                          custom_translation_table={torch.ops.alexnet_mp.lrn.default: _lrn_translation()},
                          external_data=False, verbose=False, report=False)
        return path.read_bytes()


def export_program(net: torch.nn.Module, crop: int, meta: dict[str, str]) -> bytes:
    """The eval-mode net as a ``torch.export`` program (``torch.export.load`` reads it), the
    metadata as its extra file ``metadata.json``."""
    program = torch.export.export(net.eval(), (_example(net, crop),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={"metadata.json": json.dumps(meta)})
    return buf.getvalue()


def metadata(blob: dict, checkpoint: Path, made: dict) -> dict[str, str]:
    """What a consumer needs beside the weights, as strings (ONNX metadata is string to string)."""
    return {"input": INPUT_CONVENTION, "input_name": "crops", "output_name": "logits (softmax gives probabilities)",
            "crop_size": str(blob["data"]["crop"]), "image_size": str(blob["data"]["image_size"]),
            "mean_subtracted": str(bool(blob["data"]["config"].get("mean_subtraction", True))).lower(),
            "class_names": json.dumps(class_names(blob)), "model": json.dumps(blob["model"]),
            "mean_image_location": f"{checkpoint} ['stats']['mean_image']",
            "mean_image": json.dumps(blob["stats"]["mean_image"].float().tolist()),
            "provenance": json.dumps(made),
            "trained_provenance": json.dumps(blob.get("provenance"))}


def _with_metadata(onnx_bytes: bytes, meta: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "alexnet_mp: " + INPUT_CONVENTION
    return proto.SerializeToString()


def export_model(cfg: DictConfig) -> Path:
    """Write ``cfg.out`` (``.onnx`` or ``.pt2``) from the trained net ``cfg.checkpoint``."""
    out = check_output_path(Path(str(cfg.out)))
    if out.suffix not in (".onnx", ".pt2"):
        raise UserError(f"out={out}: the name must end in .onnx (ONNX) or .pt2 (torch.export)")
    torch.set_num_threads(int(cfg.threads))
    checkpoint = Path(str(cfg.checkpoint))
    net, blob = load_trained_model(checkpoint)
    crop = int(blob["data"]["crop"])
    meta = metadata(blob, checkpoint, provenance.record(cfg))
    if out.suffix == ".pt2":
        atomic_write(out, export_program(net, crop, meta))
    else:
        atomic_write(out, _with_metadata(export_onnx(net, crop), meta))
    log.info("wrote %s (%s net, %d classes, %dpx crops)", out, blob["model"]["name"], blob["model"]["num_classes"],
             crop)
    return out
