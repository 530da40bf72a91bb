"""Using a trained net: launch/predict.py against launch/evaluate.py, launch/export.py through onnxruntime,
provenance and launch/compare.py. One tiny half net is trained once for the module."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from alexnet_mp.errors import UserError
from alexnet_mp.use.evaluate import load_trained_model, open_data
from helpers import launch, ok, one_error_line, rel_diff

CLASSES = 3

pytestmark = pytest.mark.slow


def plain(script: str, *args: str):
    """``launch/<script>.py args`` in one plain process."""
    return launch(list(args), nproc=0, script=script, timeout=300)


def write_folder(root: Path, per_class: dict[str, int]) -> None:
    """Synthetic images as PNG files, not square (the shorter side is rescaled), in class folders."""
    from PIL import Image

    from alexnet_mp.data import SyntheticImages

    for split, n in per_class.items():
        ds = SyntheticImages(split, CLASSES, n * CLASSES, 77, seed=0)
        for i in range(len(ds)):
            img, label = ds[i]
            folder = root / split / f"kind{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).resize((96, 80)).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("use")
    write_folder(tmp / "data", {"train": 16, "val": 6})
    run = tmp / "run"
    ok(plain("train", "batch_size=16", "progress=false", "model=half", "data=imagefolder", f"data.root={tmp / 'data'}",
              "data.image_size=77", "data.stats_samples=48", "epochs=1", "threads=1", f"hydra.run.dir={run}"))
    return tmp, run


@pytest.fixture(scope="module")
def evaluated(trained):
    tmp, run = trained
    ok(plain("evaluate", f"checkpoint={run}", f"output={tmp / 'eval.json'}", "workers=0", "progress=false",
              "threads=1"))
    return json.loads((tmp / "eval.json").read_text())


def cfg(**kw):
    base = dict(checkpoint=None, images=None, top_k=5, ten_crop=False, output=None, batch_size=64, device="cpu",
                threads=1, progress=False)
    return OmegaConf.create({**base, **kw})


# -- predict ---------------------------------------------------------------------------------------

@torch.no_grad()
def test_predict_agrees_with_evaluate_image_by_image(trained, evaluated):
    tmp, run = trained
    out = tmp / "pred.json"
    text = ok(plain("predict", f"checkpoint={run}", f"images={tmp / 'data' / 'val'}", "top_k=3", "batch_size=7",
                     f"output={out}", "threads=1"))
    records = {r["path"]: r for r in json.loads(out.read_text())}
    assert len(records) == 6 * CLASSES and "kind" in text and "top 3" in text
    model, blob = load_trained_model(run)
    base, augment, _ = open_data(blob, None, "val", torch.device("cpu"))
    wrong = 0
    for i, (path, label) in enumerate(base.samples):
        top = records[str(path)]["top"]
        assert [t["class"] for t in top][0] in base.classes and len(top) == 3
        probs = [t["prob"] for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        img, _ = base[i]
        expected = model(augment.centre(img[None])).argmax(1).item()
        assert top[0]["class"] == base.classes[expected], path
        wrong += top[0]["class"] != base.classes[label]
    assert evaluated["center"]["top1_err"] == pytest.approx(wrong / len(base))


def test_ten_crop_prediction_matches_the_ten_crop_error(trained, evaluated):
    from alexnet_mp.use.predict import predict

    tmp, run = trained
    records = predict(cfg(checkpoint=str(run), images=str(tmp / "data" / "val"), ten_crop=True, top_k=1))
    wrong = sum(r["top"][0]["class"] != Path(r["path"]).parent.name for r in records) / len(records)
    assert len(records) == 6 * CLASSES and wrong == pytest.approx(evaluated["ten_crop"]["top1_err"])


def test_predict_bad_input_is_one_line(trained, tmp_path):
    from alexnet_mp.use.predict import predict

    tmp, run = trained
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    assert "cannot read checkpoint" in one_error_line(plain("predict", f"checkpoint={junk}", f"images={tmp}"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="no images"):
        predict(cfg(checkpoint=str(run), images=str(tmp_path / "empty"), top_k=3))
    with pytest.raises(UserError, match="top_k=4 but the net knows 3 classes"):
        predict(cfg(checkpoint=str(run), images=str(tmp / "data" / "val"), top_k=4))
    with pytest.raises(UserError, match="does not exist"):
        predict(cfg(checkpoint=str(run), images=str(tmp / "data" / "val"), output=str(tmp_path / "no" / "p.json"),
                    top_k=3))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted((tmp / "data" / "val" / "kind0").iterdir())[:2]:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    proc = plain("predict", f"checkpoint={run}", f"images={mixed}", "top_k=2", "threads=1")
    text = ok(proc)
    assert text.count("broken.jpg") == 1 and "1 unreadable skipped" in text and "Traceback" not in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU this machine has")
def test_evaluate_on_cuda_without_a_gpu_is_one_line_before_any_reading(tmp_path):
    line = one_error_line(plain("evaluate", f"checkpoint={tmp_path / 'absent'}", "device=cuda"))
    assert "device=cuda but this machine shows no CUDA GPU" in line, line


# -- export ----------------------------------------------------------------------------------------

def ort_logits(onnx_bytes: bytes, x: torch.Tensor):
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"crops": x.numpy()})[0])


@torch.no_grad()
def test_onnx_export_gives_torchs_logits_in_onnxruntime(trained):
    import onnx

    tmp, run = trained
    out = tmp / "net.onnx"
    ok(plain("export", f"checkpoint={run}", f"out={out}", "threads=1"))
    model, blob = load_trained_model(run)
    crop = blob["data"]["crop"]
    x = torch.randn(5, 3, crop, crop, generator=torch.Generator().manual_seed(0)) * 60  # batch 5, exported with 2
    assert rel_diff(ort_logits(out.read_bytes(), x), model(x)) < 1e-4
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == ["kind0", "kind1", "kind2"] and meta["crop_size"] == str(crop)
    assert torch.tensor(json.loads(meta["mean_image"])).equal(blob["stats"]["mean_image"].float())
    assert "mean image subtracted" in meta["input"] and json.loads(meta["provenance"])["versions"]["torch"]
    lrn = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in proto.graph.node
           if n.op_type == "LRN"]
    assert len(lrn) == 2 and all(a["size"] == 5 and a["bias"] == 2.0 and a["alpha"] == pytest.approx(5e-4)
                                 for a in lrn)


@torch.no_grad()
def test_onnx_lrn_keeps_torchs_alpha_over_size_and_the_towers_apart():
    """ONNX's LRN against alexnet_mp.net.lrn on activations large enough that alpha matters."""
    from alexnet_mp.net.arch import LRN_OPTIONS
    from alexnet_mp.use.export import export_onnx, onnx_lrn
    from alexnet_mp.net.lrn import local_response_norm
    from alexnet_mp.net.model import build_model

    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))  # the exporter wants a parameter's dtype

        def forward(self, x):
            return onnx_lrn(x.repeat(1, 4, 1, 1) * self.w, groups=2, **LRN_OPTIONS["paper"])  # 12 channels

    crops = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 80
    x = crops.repeat(1, 4, 1, 1)
    ours = local_response_norm(x, groups=2, **LRN_OPTIONS["paper"])
    got = ort_logits(export_onnx(Norm(), 8), crops)
    assert rel_diff(got, ours) < 1e-5
    wrong_alpha = local_response_norm(x, groups=2, **{**LRN_OPTIONS["paper"], "alpha": 5e-4 * 5})
    assert rel_diff(wrong_alpha, ours) > 1e-2  # the comparison can see a constant off by the window size
    one_group = local_response_norm(x, groups=1, **LRN_OPTIONS["paper"])
    assert rel_diff(one_group, ours) > 1e-3  # and a window that crosses the towers
    full = build_model("full", num_classes=10, input_size=67, init="paper").eval()  # the two towers as groups
    crops = torch.randn(3, 3, 67, 67, generator=torch.Generator().manual_seed(2)) * 60
    assert rel_diff(ort_logits(export_onnx(full, 67), crops), full(crops)) < 1e-4


@torch.no_grad()
def test_torch_export_program_and_bad_out(trained, tmp_path):
    tmp, run = trained
    out = tmp_path / "net.pt2"
    ok(plain("export", f"checkpoint={run}", f"out={out}", "threads=1"))
    model, blob = load_trained_model(run)
    crop = blob["data"]["crop"]
    x = torch.randn(3, 3, crop, crop) * 60
    extra = {"metadata.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert rel_diff(program.module()(x), model(x)) < 1e-5
    assert json.loads(extra["metadata.json"])["crop_size"] == str(crop)
    from alexnet_mp.use.export import export_model

    def bad_out(out: Path) -> str:
        with pytest.raises(UserError) as err:
            export_model(OmegaConf.create({"checkpoint": str(run), "out": str(out), "threads": 1}))
        return str(err.value)
    assert "does not exist" in bad_out(tmp_path / "missing" / "net.onnx")
    assert "must end in .onnx" in bad_out(tmp_path / "n.txt")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "not writable" in bad_out(locked / "n.onnx")


# -- provenance and compare ------------------------------------------------------------------------

def test_provenance_in_the_run_and_compare(trained, tmp_path):
    tmp, run = trained
    summary = json.loads((run / "summary.json").read_text())
    prov = summary["provenance"]
    assert prov["versions"]["torch"] == torch.__version__ and len(prov["config_sha256"]) == 64
    assert prov["git"]["commit"] is None or len(prov["git"]["commit"]) == 40
    assert prov["devices"]
    _, blob = load_trained_model(run)
    assert blob["provenance"] == prov and blob["classes"] == ["kind0", "kind1", "kind2"]
    other = tmp_path / "other"
    other.mkdir()
    conf = OmegaConf.load(run / "config.yaml")
    lr = conf.optim.lr
    conf.optim.lr = lr * 3
    OmegaConf.save(conf, other / "config.yaml")
    s = json.loads((run / "summary.json").read_text())
    s["val_top1_err"] = (s["val_top1_err"] or 0) + 0.125
    (other / "summary.json").write_text(json.dumps(s))
    text = ok(plain("compare", str(run), str(other)))
    assert "optim.lr" in text and repr(lr) in text and repr(lr * 3) in text and "val_top1_err" in text
    assert "data.image_size" not in text  # keys that agree are not printed
    assert "no summary.json" in one_error_line(plain("compare", str(run), str(tmp_path)))
