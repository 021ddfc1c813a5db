"""Shared command-line conventions: dash and underscore spellings, demo defaults, typed flags win."""
import train_MobileNetV3_Small_BoT_Linear
import train_ResNet18_Hybrid
import train_vietocr
from src.tasks.classification import parse_args

MNV3, R18 = "MobileNetV3_Small_BoT_Linear", "ResNet18_Hybrid"
SCRIPTS = {MNV3: train_MobileNetV3_Small_BoT_Linear, R18: train_ResNet18_Hybrid}


def build_parser(model, description=""):
    """The parser of the script whose default model is ``model``."""
    return SCRIPTS[model].build_parser()


def test_dash_and_underscore_spellings_are_the_same_flag():
    parser = build_parser(R18, "")
    a = parse_args(parser, ["--base-lr", "0.01", "--train_limit", "7", "--pin-memory"])
    b = parse_args(parser, ["--base_lr", "0.01", "--train-limit", "7", "--pin_memory"])
    assert vars(a) == vars(b)
    assert (a.base_lr, a.train_limit, a.pin_memory) == (0.01, 7, True)


def test_demo_defaults_follow_the_backbone_and_typed_flags_win():
    r18 = parse_args(build_parser(R18, ""), ["--demo"])
    mnv3 = parse_args(build_parser(MNV3, ""), ["--demo"])
    assert (r18.epochs, r18.base_lr, r18.image_size) == (12, 2e-3, 96)
    assert (mnv3.epochs, mnv3.base_lr, mnv3.head_lr, mnv3.image_size) == (24, 4e-3, 4e-3, 96)
    # the MobileNet script asked for a ResNet variant gets the ResNet schedule
    assert parse_args(build_parser(MNV3, ""), ["--demo", "--model", "ResNet18_CA"]).epochs == 12
    typed = parse_args(build_parser(MNV3, ""), ["--demo", "--epochs", "3", "--head-lr", "1e-2"])
    assert (typed.epochs, typed.head_lr, typed.base_lr) == (3, 1e-2, 4e-3)
    plain = parse_args(build_parser(MNV3, ""), [])
    assert plain.epochs != 24 and plain.image_size != 96


def test_explicit_args_ignores_set_defaults():
    """--resume must not mistake a script's set_defaults() (or demo defaults) for typed flags."""
    from src import cli
    parser = train_vietocr.build_parser()
    assert cli.explicit_args(parser, ["--resume", "x"]) == {"resume": "x"}
    cli.parse_with_demo_defaults(parser, ["--demo"], {"epochs": 5})
    assert cli.explicit_args(parser, ["--demo", "--lr", "0.1"]) == {"demo": True, "lr": 0.1}


def test_ocr_demo_defaults_and_typed_flags_win():
    from src.tasks.ocr import parse_args

    build_parser = (lambda _: train_vietocr.build_parser())
    demo = parse_args(build_parser(""), ["--demo"])
    assert (demo.model_size, demo.ctc_weight, demo.batch_size, demo.epochs, demo.augment) == ("small", 1.0, 8, 8, False)
    assert demo.base_lr == demo.head_lr == 1e-3 and demo.label_smoothing == 0.0
    typed = parse_args(build_parser(""), ["--demo", "--lr", "5e-4", "--model-size", "full", "--ctc-weight", "0"])
    assert (typed.model_size, typed.ctc_weight, typed.base_lr, typed.batch_size) == ("full", 0.0, 5e-4, 8)
    plain = parse_args(build_parser(""), [])  # VietOCR's training without --demo
    assert (plain.model_size, plain.ctc_weight, plain.label_smoothing, plain.base_lr, plain.batch_size) == \
        ("full", 0.0, 0.1, 3e-4, 32)


def test_resume_takes_only_flags_that_do_not_change_the_run(tmp_path):
    """--epochs, --device, paths: taken; --image-size (the data) or --model (the model): one line naming them."""
    import pytest
    import torch

    from src import cli
    from src.errors import DataError

    saved = vars(parse_args(build_parser(R18), ["--image-size", "64", "--epochs", "3"]))
    torch.save({"model": {}, "args": saved}, tmp_path / "last.pt")
    parser = build_parser(R18)
    ok = parse_args(parser, ["--resume", str(tmp_path), "--epochs", "9", "--num-workers", "0", "--device", "cpu"])
    assert (ok.epochs, ok.image_size, ok.num_workers, ok.resume) == (9, 64, 0, str(tmp_path / "last.pt"))
    same = parse_args(parser, ["--resume", str(tmp_path), "--image-size", "64"])     # typed but unchanged
    assert same.image_size == 64
    with pytest.raises(DataError) as info:
        parse_args(parser, ["--resume", str(tmp_path), "--image-size", "96", "--model", "ResNet18_CA"])
    assert info.value.param == "resume" and "--image-size 96 (the run has 64), --model 'ResNet18_CA' (the run has " \
        "'ResNet18_Hybrid')" in str(info.value)
    assert cli.run_main(lambda argv: parse_args(parser, argv), ["--resume", str(tmp_path), "--seed", "1"]) == 2


def test_sync_bn_without_cuda_is_refused_at_parse_time(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(SystemExit) as info:
        parse_args(build_parser(R18), ["--sync-bn"])
    assert info.value.code == 2 and "--sync-bn needs CUDA devices" in capsys.readouterr().err
    assert parse_args(build_parser(R18), ["--sync_bn", "--device", "cuda"]).sync_bn is True


def _script_parsers():
    import train_ovd
    import train_yolov8n_refdet
    return {m.__name__: m.build_parser() for m in (train_MobileNetV3_Small_BoT_Linear, train_ResNet18_Hybrid,
                                                    train_vietocr, train_ovd, train_yolov8n_refdet)}


def test_every_off_switch_has_its_underscore_spelling():
    """The seeds type ``--no_augment``; every ``--no-x`` a script has must accept that spelling too."""
    seen = 0
    for name, parser in _script_parsers().items():
        offs = {s for a in parser._actions for s in a.option_strings if s.startswith("--no")}
        for s in [s for s in offs if s.startswith("--no-")]:
            under = "--no_" + s[5:].replace("-", "_")
            assert under in offs, f"{name}: {s} without {under}"
            dest = next(a.dest for a in parser._actions if s in a.option_strings)
            assert getattr(parser.parse_args([under]), dest) is False
            seen += 1
    assert seen >= 8   # amp x5, augment x3, aux-loss, siamese, ...


def test_num_workers_default_is_capped_at_the_cpus_a_typed_value_is_kept(monkeypatch):
    from src import cli
    from src.tasks import ocr

    assert cli.available_cpus() >= 1
    monkeypatch.setattr(cli, "available_cpus", lambda: 1)
    assert parse_args(build_parser(R18), []).num_workers == 1          # the default 4 on a 1-CPU machine
    assert parse_args(build_parser(R18), ["--num-workers", "3"]).num_workers == 3
    assert ocr.parse_args(train_vietocr.build_parser(), ["--num_workers", "0"]).num_workers == 0
    monkeypatch.setattr(cli, "available_cpus", lambda: 64)
    assert parse_args(build_parser(R18), []).num_workers == 4


def test_val_every_and_limit_val_batches_are_checked_at_parse_time(capsys):
    import pytest
    from src.tasks import ocr

    args = ocr.parse_args(train_vietocr.build_parser(), ["--val-every", "3", "--limit_val_batches", "0.25"])
    assert (args.val_every, args.limit_val_batches) == (3, 0.25)
    assert ocr.parse_args(train_vietocr.build_parser(), ["--limit-val-batches", "20"]).limit_val_batches == 20
    for bad in (["--val-every", "0"], ["--limit-val-batches", "-1"]):
        with pytest.raises(SystemExit):
            ocr.parse_args(train_vietocr.build_parser(), bad)
        assert "must be" in capsys.readouterr().err


def test_a_seed_flag_that_does_nothing_here_says_so_once(capsys):
    parse_args(build_parser(R18), ["--save-history", "--epochs", "3"])
    err = capsys.readouterr().err.splitlines()
    assert err == ["notice: --save-history is accepted for the seed's recipes and does nothing here: history.json "
                   "and metrics.json are always written"]
    parse_args(build_parser(R18), ["--epochs", "3"])
    assert capsys.readouterr().err == ""
