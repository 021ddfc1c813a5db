"""``python -m src.tools.convert_ultralytics`` and ``--detector-weights``: ultralytics' yolov8n layout
mapped onto our detector, every shape checked and every tensor used, and the detector computing exactly
what the same weights loaded directly compute. The ultralytics layout is built here without ultralytics
(its names written out by hand); the last test checks a real ultralytics model where one is installed."""
import copy
import logging
import sys
import types

import pytest
import torch
from torch import nn

import train_yolov8n_refdet
from src import cli
from src.errors import DataError
from src.models.layers.yolo import YOLOv8Backbone, YOLOv8PAN
from src.models.refdet import build_refdet_model
from src.models.ultralytics_keys import convert_state_dict, detector_target, read_state_dict, yolov8n_detector
from src.tasks import refdet, refdet_args
from src.tools import convert_ultralytics as C
from src.training.optim import param_groups

# written independently of src.models.ultralytics_keys: yolov8n.yaml's layers that hold tensors, and our
# module for each (10, 11, 13, 14, 17, 20 are Upsample and Concat; 22 is Detect)
YAML_TO_OURS = [(0, "backbone.stem.0"), (1, "backbone.stem.1"), (2, "backbone.stem.2"), (3, "backbone.stage3.0"),
                (4, "backbone.stage3.1"), (5, "backbone.stage4.0"), (6, "backbone.stage4.1"), (7, "backbone.stage5.0"),
                (8, "backbone.stage5.1"), (9, "backbone.stage5.2"), (12, "neck.top4"), (15, "neck.top3"),
                (16, "neck.down3"), (18, "neck.bottom4"), (19, "neck.down4"), (21, "neck.bottom5")]
# tensors per layer of ultralytics 8.4.190's DetectionModel("yolov8n.yaml").state_dict() (counted there);
# its Detect head (layer 22) has 85 more
TENSORS_PER_LAYER = {0: 6, 1: 6, 2: 24, 3: 6, 4: 36, 5: 6, 6: 36, 7: 6, 8: 24, 9: 12, 12: 24, 15: 24, 16: 6, 18: 24,
                     19: 6, 21: 24}
# a few names in full, as ultralytics writes them -> ours
SPOT = {"model.0.conv.weight": "backbone.stem.0.conv.weight",
        "model.0.bn.running_mean": "backbone.stem.0.bn.running_mean",
        "model.2.cv1.conv.weight": "backbone.stem.2.cv1.conv.weight",
        "model.2.m.0.cv1.conv.weight": "backbone.stem.2.m.0.cv1.conv.weight",
        "model.6.m.1.cv2.bn.bias": "backbone.stage4.1.m.1.cv2.bn.bias",
        "model.9.cv2.conv.weight": "backbone.stage5.2.cv2.conv.weight",
        "model.16.conv.weight": "neck.down3.conv.weight",
        "model.21.cv2.bn.running_var": "neck.bottom5.cv2.bn.running_var"}
SMALL = ["--support-size", "32", "--embed-dim", "16", "--freeze-dino-layers", "12"]


def _detector_state(seed: int, width: float = 0.25) -> dict[str, torch.Tensor]:
    """Our detector's tensors with random values everywhere, BatchNorm statistics included (so eval
    mode really uses what was loaded)."""
    torch.manual_seed(seed)
    backbone = YOLOv8Backbone(width=width)
    det = nn.ModuleDict({"backbone": backbone, "neck": YOLOv8PAN(backbone.channels)})
    state = det.state_dict()
    for k, v in state.items():
        if v.dtype.is_floating_point:
            v.copy_(torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v) * 0.2)
    return state


def _ultralytics_layout(state: dict, prefix: str = "model.") -> dict[str, torch.Tensor]:
    out = {}
    for index, ours in YAML_TO_OURS:
        out |= {f"{prefix}{index}.{k[len(ours) + 1:]}": v for k, v in state.items() if k.startswith(ours + ".")}
    # a Detect head (layer 22) the converter must skip
    out |= {f"{prefix}22.cv2.0.0.conv.weight": torch.randn(64, 64, 3, 3), f"{prefix}22.cv3.2.2.bias": torch.randn(80),
            f"{prefix}22.dfl.conv.weight": torch.arange(16.0).view(1, 16, 1, 1)}
    return out


@pytest.fixture(scope="module")
def state():
    return _detector_state(0)


def test_our_detector_has_yolov8n_s_tensors_layer_by_layer(state):
    layout = _ultralytics_layout(state)
    for theirs, ours in SPOT.items():
        assert layout[theirs] is state[ours]
    counts = {}
    for k in layout:
        counts[int(k.split(".")[1])] = counts.get(int(k.split(".")[1]), 0) + 1
    assert counts == {**TENSORS_PER_LAYER, 22: 3} and len(state) == sum(TENSORS_PER_LAYER.values()) == 270


def test_cli_converts_to_a_weights_only_state_dict(state, tmp_path, capsys):
    src, out = tmp_path / "yolov8n_sd.pt", tmp_path / "detector.pt"
    torch.save(_ultralytics_layout(state), src)
    assert C.main([str(src), str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"{src}: 270 tensors of yolov8n layers 0-21 mapped onto the detector (backbone + neck); "
                        f"3 Detect-head tensors (model.22.*) skipped")
    assert lines[1] == f"wrote {out}; train from it with --detector-weights {out}"
    converted = torch.load(out, weights_only=True)
    assert list(converted) == list(state)
    assert all(torch.equal(converted[k], state[k]) for k in state)


def _features(model, x):
    with torch.no_grad():
        return model.eval().features(x)


@pytest.mark.parametrize("layout", ["converted", "model.", "", "model.model."])
def test_detector_weights_give_the_same_features_as_loading_directly(state, tmp_path, layout, caplog):
    """--detector-weights through the script's parser and the task's build_model: the converter's output
    and ultralytics layouts (DetectionModel, its nn.Sequential, the YOLO wrapper) converted on loading."""
    path = tmp_path / "w.pt"
    if layout == "converted":
        C.main([str(_save(tmp_path / "u.pt", _ultralytics_layout(state))), str(path)])
    else:
        torch.save(_ultralytics_layout(state, layout), path)
    args = refdet_args.parse_args(train_yolov8n_refdet.build_parser(), [*SMALL, "--detector-weights", str(path)])
    torch.manual_seed(5)
    logger = logging.getLogger("src")       # run set-up stops it propagating to the root, where caplog listens
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="src"):
            model = refdet.build_model(args)
    finally:
        logger.removeHandler(caplog.handler)
    assert f"{path}: 270 tensors of yolov8n layers 0-21 loaded into the detector" in caplog.text
    torch.manual_seed(6)
    direct = build_refdet_model(support_size=32, embed_dim=16, freeze_dino_layers=12)
    x = torch.randn(2, 3, 64, 96)
    before = _features(direct, x)
    direct.backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")})
    direct.neck.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("neck.")})
    for a, b, c in zip(_features(model, x), _features(direct, x), before):
        assert torch.equal(a, b) and not torch.equal(a, c)
    # the loaded detector is pretrained: --base-lr, lr/10 by default
    assert args.base_lr == pytest.approx(args.head_lr / 10)
    groups = {g["name"]: g for g in param_groups(model, args.base_lr, args.head_lr, 0.0)}
    backbone_weight = model.backbone.stem[0].conv.weight
    assert any(p is backbone_weight for p in groups["pretrained_decay"]["params"])
    assert groups["pretrained_decay"]["lr"] == args.base_lr


def _save(path, obj):
    torch.save(obj, path)
    return path


def _convert(state_dict):
    return convert_state_dict(state_dict, detector_target(yolov8n_detector()), "in.pt", "detector_weights")


def test_another_scale_fails_on_its_first_tensor_with_both_shapes(tmp_path, capsys):
    yolov8s = _ultralytics_layout(_detector_state(1, width=0.5))
    with pytest.raises(DataError) as info:
        _convert(yolov8s)
    assert str(info.value) == ("in.pt: model.0.conv.weight has shape (32, 3, 3, 3) but our detector's "
                               "backbone.stem.0.conv.weight is (16, 3, 3, 3); not a yolov8n (width 0.25, depth 0.33, "
                               "max channels 1024) state dict (another scale?)")
    assert info.value.param == "detector_weights"
    path = _save(tmp_path / "s.pt", yolov8s)
    assert cli.run_main(C.main, [str(path), str(tmp_path / "out.pt")]) == 2       # the CLI: one line, exit 2
    assert capsys.readouterr().err == f"error: {path}: model.0.conv.weight has shape (32, 3, 3, 3) but our " \
                                      f"detector's backbone.stem.0.conv.weight is (16, 3, 3, 3); not a yolov8n " \
                                      f"(width 0.25, depth 0.33, max channels 1024) state dict (another scale?)\n"
    assert not (tmp_path / "out.pt").exists()


def test_a_missing_layer_and_a_deeper_model_are_named(state):
    layout = _ultralytics_layout(state)
    without_16 = {k: v for k, v in layout.items() if not k.startswith("model.16.")}
    with pytest.raises(DataError, match=r"in.pt: 6 of the detector's 270 tensors are missing, first "
                                        r"model\.16\.conv\.weight \(layer 16, our neck\.down3\.conv\.weight\)"):
        _convert(without_16)
    deeper = {**layout, "model.2.m.1.cv1.conv.weight": torch.zeros(16, 16, 3, 3)}    # yolov8m repeats C2f more
    with pytest.raises(DataError, match=r"model\.2\.m\.1\.cv1\.conv\.weight has no place in our detector "
                                        r"\(as backbone\.stem\.2\.m\.1\.cv1\.conv\.weight\)"):
        _convert(deeper)
    with pytest.raises(DataError, match=r"model\.11\.x: layer 11 of yolov8n is Concat, which has no tensors"):
        _convert({**layout, "model.11.x": torch.zeros(1)})
    with pytest.raises(DataError, match=r"head\.w is not a key of an ultralytics detector"):
        _convert({**layout, "head.w": torch.zeros(1)})


def test_detector_weights_errors_name_the_flag(tmp_path):
    parser = train_yolov8n_refdet.build_parser()
    args = refdet_args.parse_args(parser, [*SMALL, "--detector-weights", str(tmp_path / "none.pt")])
    with pytest.raises(DataError, match="file not found") as info:
        refdet.build_model(args)
    assert info.value.param == "detector_weights"
    with pytest.raises(SystemExit):      # both would set the detector's weights
        refdet_args.parse_args(parser, ["--detector-weights", "a.pt", "--init-from", "b.pt"])


class _Pickled(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, 4, 1))


def test_an_ultralytics_pickle_needs_ultralytics_and_is_read_lazily(tmp_path, monkeypatch):
    """A .pt as ultralytics saves it (its pickled DetectionModel): without ultralytics one line says what
    to do; with it (a stand-in module here) the model's state dict is read, in fp32."""
    package, nn_pkg, tasks = (types.ModuleType(n) for n in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks"))
    fake = type("DetectionModel", (_Pickled,), {"__module__": "ultralytics.nn.tasks"})
    tasks.DetectionModel, package.nn, nn_pkg.tasks = fake, nn_pkg, tasks
    for name, module in (("ultralytics", package), ("ultralytics.nn", nn_pkg), ("ultralytics.nn.tasks", tasks)):
        monkeypatch.setitem(sys.modules, name, module)
    path = _save(tmp_path / "yolov8n.pt", {"model": fake().half(), "ema": None, "epoch": -1})
    with pytest.raises(DataError, match=r"yolov8n.pt is an ultralytics checkpoint \(a pickled model, which runs code "
                                        r"when loaded\); convert it once .* python -m src.tools.convert_ultralytics"):
        read_state_dict(str(path), "detector_weights")             # what training reads: tensors only
    state = read_state_dict(str(path), "detector_weights", allow_pickle=True)      # the converter
    assert list(state) == ["model.0.weight", "model.0.bias"] and state["model.0.weight"].dtype == torch.float32
    monkeypatch.setitem(sys.modules, "ultralytics", None)        # not installed: the import fails
    with pytest.raises(DataError, match=r"yolov8n.pt is an ultralytics checkpoint \(pickled model\); install "
                                        r"ultralytics to read it, or save its model.state_dict\(\)") as info:
        read_state_dict(str(path), "detector_weights", allow_pickle=True)
    assert info.value.param == "detector_weights"
    other = _save(tmp_path / "other.pt", {"model": _Pickled()})   # a pickle of something else: never unpickled
    with pytest.raises(DataError, match="holds Python objects that could run code when loaded"):
        read_state_dict(str(other), allow_pickle=True)


def test_a_real_ultralytics_yolov8n_maps_and_computes_the_same(tmp_path):
    """Only where ultralytics is installed (never a dependency): DetectionModel('yolov8n.yaml'), built
    offline, maps tensor for tensor, and its layers 15, 18, 21 output what our neck outputs."""
    ul_tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    theirs = ul_tasks.DetectionModel("yolov8n.yaml", verbose=False)
    with torch.no_grad():
        for name, t in theirs.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else torch.randn_like(t) * 0.2)
    done = _convert(theirs.state_dict())
    assert len(done.state_dict) == 270 and len(done.skipped) == 85
    ours = yolov8n_detector()
    ours.load_state_dict(done.state_dict)
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        outputs, y = [], x
        for layer in theirs.eval().model[:22]:        # ultralytics' own routing of layer inputs
            if layer.f != -1:
                y = outputs[layer.f] if isinstance(layer.f, int) else [y if j == -1 else outputs[j] for j in layer.f]
            y = layer(y)
            outputs.append(y)
        p3, p4, p5 = ours.eval()["backbone"](x)
        mine = (p3, p4, p5, *ours["neck"](p3, p4, p5))
    for got, index in zip(mine, (4, 6, 9, 15, 18, 21)):
        assert torch.equal(got, outputs[index]), index
    path = _save(tmp_path / "yolov8n.pt", {"model": copy.deepcopy(theirs).half(), "ema": None})   # as ultralytics saves
    half = _convert(read_state_dict(str(path), allow_pickle=True))
    assert all(torch.equal(half.state_dict[k], v.half().float()) for k, v in done.state_dict.items()
               if v.dtype.is_floating_point)
