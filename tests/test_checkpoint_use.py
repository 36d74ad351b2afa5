"""A checkpoint carries what it takes to use its model: `convnext.load` + `convnext.transform` classify an image
exactly as evaluation did, and predict/eval/export/benchmark/convert work given only the checkpoint; every
mistake a user can make on the command line is one line on stderr and a non-zero exit."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

import convnext
from checkpoint_helpers import fmnist_recipe, randomize, training_checkpoint
from convnext.cli import main
from convnext.data.datasets import fashion_mnist
from convnext.data.transforms import SmallImageBatchTransform
from convnext.data_config import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataSpec, data_spec

TINY = {"dims": (8, 16, 32), "depths": (1, 1, 1)}


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """A tiny Fashion-MNIST run folder: best.pt as the training loop writes it, the same weights in a
    checkpoint from before data configs were recorded (legacy.pt), and 20 test images as PNG files in an
    ImageNet-layout folder whose class folders are the class names ("T-shirt/top" -> "T-shirt_top")."""
    root = tmp_path_factory.mktemp("run")
    model = randomize(convnext.create_model("convnext_fmnist", num_classes=10, in_chans=1, **TINY), 0.3)
    spec = data_spec(fmnist_recipe()["data"], in_chans=1)  # what the training loop records
    torch.save(training_checkpoint(model, spec, fmnist_recipe(kwargs={"dims": [8, 16, 32], "depths": [1, 1, 1]})),
               root / "best.pt")
    torch.save(training_checkpoint(model, None, fmnist_recipe(kwargs={"dims": [8, 16, 32], "depths": [1, 1, 1]})),
               root / "legacy.pt")
    images, labels = fashion_mnist(train=False)
    images, labels = images[:20], labels[:20]
    pngs = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "photos" / "val" / FASHION_MNIST_CLASSES[label].replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        pngs.append(folder / f"{i}.png")
        Image.fromarray(img[0].numpy()).save(pngs[-1])
    return {"root": root, "model": model.eval(), "spec": spec, "images": images, "labels": labels, "pngs": pngs}


def test_load_and_transform_see_an_image_as_evaluation_did(run):
    model = convnext.load(run["root"] / "best.pt")
    assert model.data_config == run["spec"]
    assert model.data_config.class_names == FASHION_MNIST_CLASSES and model.data_config.input_size == (28, 28)
    # the three lines a user writes
    x = convnext.transform(model)(Image.open(run["pngs"][0]))[None]
    assert x.shape == (1, 1, 28, 28)
    # ... give exactly the evaluation's input (the batch transform of the training loop) and its logits
    expected = SmallImageBatchTransform(FASHION_MNIST_MEAN, FASHION_MNIST_STD)(run["images"][:1])
    assert torch.equal(x, expected)
    with torch.no_grad():
        assert torch.allclose(model(x), run["model"](expected), atol=1e-5)
    # an RGB photo of any size is brought to the model's format
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    assert convnext.transform(model)(rgb).shape == (1, 28, 28)


def test_rgb_model_from_our_folder(tmp_path):
    spec = DataSpec(input_size=(48, 48), crop_pct=0.9, interpolation="bilinear", class_names=("cat", "dog", "emu"))
    model = convnext.create_model("convnext_atto", num_classes=3)
    model.data_config = spec
    convnext.save(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["data_config"]["class_names"] == ["cat", "dog",
                                                                                                       "emu"]
    back = convnext.load(tmp_path / "m")
    assert back.data_config == spec
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    timm_tf = create_transform(48, is_training=False, crop_pct=0.9, interpolation="bilinear")
    assert torch.equal(convnext.transform(back)(photo), timm_tf(photo))
    assert torch.equal(convnext.transform(back)(np.asarray(photo)), timm_tf(photo))  # arrays too
    assert convnext.transform(back)(photo.convert("L")).shape == (3, 48, 48)  # grayscale photo -> RGB
    # a model made without weights gets ImageNet's format and, for a 1000-class head, ImageNet's names
    fresh = convnext.create_model("convnext_atto")
    assert fresh.data_config.input_size == (224, 224) and fresh.data_config.class_name(281) == "tabby, tabby cat"


def test_checkpoint_from_before_data_configs(run, tmp_path):
    # Fashion-MNIST: the name from the recipe, the architecture from the shapes, the data config from the recipe
    old = convnext.load(run["root"] / "legacy.pt")
    new = convnext.load(run["root"] / "best.pt")
    assert old.config == new.config and old.data_config == new.data_config
    assert all(torch.equal(old.state_dict()[k], v) for k, v in new.state_dict().items())
    # an image folder: in_chans from the shapes, not from the data set (a grayscale model on folders), the input
    # size and crop from the recipe, the class names from the training folders while they exist
    for name in ("ant", "bee"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
    gray = convnext.create_model("convnext_atto", num_classes=2, in_chans=1)
    recipe = {"model": {"name": "convnext_atto", "kwargs": {}},
              "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"), "input_size": 64, "crop_pct": 0.95}}
    torch.save(training_checkpoint(gray, None, recipe), tmp_path / "old.pt")
    spec = convnext.load(tmp_path / "old.pt").data_config
    assert (spec.in_chans, spec.input_size, spec.crop_pct, spec.class_names) == (1, (64, 64), 0.95, ("ant", "bee"))
    # at 384 the recipe's eval squashes, as the official code does
    at_384 = data_spec({"dataset": "imagefolder", "input_size": 384}, 3)
    assert (at_384.crop_pct, at_384.crop_mode, at_384.class_names) == (1.0, "squash", None)


def test_release_data_config_follows_the_paper():
    from convnext.checkpoints import find_release, release_data_config, release_for_file

    at_224 = release_data_config(find_release("convnext_base", "in1k"))
    at_384 = release_data_config(find_release("convnext_base", "in22k_ft_in1k_384"))
    assert (at_224.input_size, at_224.crop_pct, at_224.crop_mode, at_224.interpolation) == ((224, 224), 0.875,
                                                                                            "center", "bicubic")
    assert (at_384.input_size, at_384.crop_pct, at_384.crop_mode) == ((384, 384), 1.0, "squash")
    assert at_224.class_names[281] == "tabby, tabby cat" and at_224.mean == (0.485, 0.456, 0.406)
    assert len(release_data_config(find_release("convnext_tiny", "in22k")).class_names) == 21841
    assert release_for_file("/anywhere/convnext_large_1k_384.pth") == find_release("convnext_large", "in1k_384")
    assert release_for_file("my_model.pth") is None


def test_convert_writes_our_folder_and_hf_with_the_data_config(run, tmp_path, capsys):
    assert main(["convert", str(run["root"] / "legacy.pt"), str(tmp_path / "ours")]) == 0
    assert "(training checkpoint, official layout)" in capsys.readouterr().out
    back = convnext.load(tmp_path / "ours")
    assert back.config["model"] == "convnext_fmnist" and back.data_config == run["spec"]
    assert all(torch.equal(back.state_dict()[k], v) for k, v in run["model"].state_dict().items())

    assert main(["convert", str(run["root"] / "best.pt"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["id2label"]["0"] == "T-shirt/top" and hf["num_channels"] == 1 and hf["image_size"] == 28
    # HF's own processor config says the same, so the folder reads back with the same data config
    assert convnext.read_source(tmp_path / "hf").data_config == run["spec"]


def test_cli_given_only_the_checkpoint(run, tmp_path, capsys, run_cli):
    best, pngs = run["root"] / "best.pt", run["pngs"]
    with torch.no_grad():
        probs = run["model"](SmallImageBatchTransform(FASHION_MNIST_MEAN, FASHION_MNIST_STD)(run["images"])).softmax(1)

    # predict, in a real process: the command of the issue, which crashed
    proc = run_cli("predict", pngs[0], pngs[1], "--weights", best, "--topk", "3")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[1]
    top = int(probs[0].argmax())
    assert first.strip().startswith("1.") and first.endswith(f"{FASHION_MNIST_CLASSES[top]} ({top})")
    assert main(["predict", str(pngs[2]), "--weights", str(best), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["indices"] == probs[2].topk(5).indices.tolist()
    assert out["names"] == [FASHION_MNIST_CLASSES[i] for i in out["indices"]]
    assert np.allclose(out["probs"], probs[2].topk(5).values.tolist(), atol=1e-5)

    # eval on a folder of photos named after the classes: the same top-1 as the model on the test images
    assert main(["eval", "--weights", str(best), "--data", str(run["root"] / "photos"), "--json",
                 "--workers", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 20
    assert result["top1"] == pytest.approx(100 * float((probs.argmax(1) == run["labels"]).float().mean()), abs=1e-4)
    # and on its own data set (the recipe's: Fashion-MNIST)
    assert main(["eval", "--weights", str(best), "--limit", "64", "--json", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 64

    # export: size, channels and classes from the checkpoint, verified on photos made grayscale 28x28
    assert main(["export", "--weights", str(best), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "verified on 7 real images" in out and "1x28x28" in out
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [1, 28, 28]
    assert DataSpec.from_dict(json.loads((tmp_path / "m.onnx.json").read_text())) == run["spec"]

    # benchmark: the checkpoint's model at its input size
    assert main(["benchmark", "--weights", str(best), "-b", "2", "--warmup", "1", "--reps", "1", "--peak-size", "64",
                 "--threads", "1", "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert [(r["model"], r["img_size"]) for r in report["results"]] == [(f"ours:{best}", [28, 28])]


@pytest.fixture(scope="module")
def bad_files(run, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.txt").write_text("not a checkpoint")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    torch.save({"weights": {}}, d / "foreign.pth")
    (d / "empty_dir").mkdir()
    convnext.save(convnext.create_model("convnext_atto", num_classes=3), d / "ours")
    for name in ("a", "b", "c"):
        (d / "three" / "val" / name).mkdir(parents=True)
        Image.new("L", (28, 28)).save(d / "three" / "val" / name / "x.png")
    return d


CASES = {  # argv (with {run}, {bad} and {img} filled in), what the one line must say
    "unknown model (flops)": (["flops", "convnext_tinny"], "Did you mean convnext_tiny"),
    "unknown model (predict)": (["predict", "{img}", "--model", "convnext_tinny", "--weights", "in1k"],
                                "Unknown model 'convnext_tinny'"),
    "unknown model (export)": (["export", "--model", "convnext_tinny", "--format", "onnx"], "Unknown model"),
    "missing checkpoint (predict)": (["predict", "{img}", "--weights", "{bad}/missing.pt"], "Checkpoint not found"),
    "missing checkpoint (eval)": (["eval", "--weights", "{bad}/missing.pt"], "Checkpoint not found"),
    "missing checkpoint (benchmark)": (["benchmark", "ours:{bad}/missing.pt"], "Checkpoint not found"),
    "not a checkpoint (eval)": (["eval", "--weights", "{bad}/notes.txt"], "is not a checkpoint"),
    "not a checkpoint (convert)": (["convert", "{img}", "{bad}/out"], "is not a checkpoint"),
    "no weights inside (export)": (["export", "--weights", "{bad}/foreign.pth", "--format", "onnx"],
                                   "No state dict found"),
    "empty folder (predict)": (["predict", "{img}", "--weights", "{bad}/empty_dir"], "without any of"),
    "missing image": (["predict", "{bad}/missing.png", "--weights", "{run}/best.pt"], "Image not found"),
    "corrupt image": (["predict", "{bad}/corrupt.png", "--weights", "{run}/best.pt"], "Cannot read image"),
    "no data set (eval)": (["eval", "--weights", "{bad}/ours"], "pass --data FOLDER"),
    "wrong classes (eval)": (["eval", "--weights", "{run}/best.pt", "--data", "{bad}/three"], "3 class folders"),
    "no split folder (eval)": (["eval", "--weights", "{run}/best.pt", "--data", "{bad}/empty_dir"], "does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_line_without_traceback(case, run, bad_files, capfd):
    argv, message = CASES[case]
    argv = [a.format(run=run["root"], bad=bad_files, img=run["pngs"][0]) for a in argv]
    code = main(argv)
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"convnext {argv[0]}: error: ") and message in lines[0], lines[0]


def test_a_real_process_reports_a_user_error_in_one_line(run, bad_files, run_cli):
    proc = run_cli("eval", "--weights", bad_files / "notes.txt")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "is not a checkpoint" in proc.stderr
