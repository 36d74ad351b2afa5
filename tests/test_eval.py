"""Evaluation: top-1/top-5 on known logits, and the train -> eval command-line path on a small subset."""

import json

import pytest
import torch

from convnext.evaluate import evaluate, topk_correct
from convnext.train.classification import ClassificationTask
from convnext.train.config import load_config


def test_topk_on_known_logits():
    logits = torch.tensor([
        [0.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # target 1: top-1 hit
        [9.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # target 3: 5th largest -> top-5 hit only
        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0],  # target 6: smallest -> miss
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],  # target 2: 5th largest -> top-5 hit
    ])
    targets = torch.tensor([1, 3, 6, 2])
    assert topk_correct(logits, targets) == [1, 3]
    assert topk_correct(logits[:, :3], torch.tensor([1, 0, 2, 2]), ks=(1, 5)) == [3, 4]  # k > classes counts all


def test_evaluate_sums_over_batches():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x

    logits = torch.randn(37, 10)
    targets = logits.argmax(1).clone()
    targets[:7] = (targets[:7] + 1) % 10  # 7 wrong at top-1
    batches = [(logits[i:i + 8], targets[i:i + 8]) for i in range(0, 37, 8)]
    r = evaluate(Fixed(), batches)
    assert r["n"] == 37 and r["top1"] == pytest.approx(100 * 30 / 37)
    expected5 = 100 * topk_correct(logits, targets, (5,))[0] / 37
    assert r["top5"] == pytest.approx(expected5)
    assert r["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)


class LeftRight(torch.nn.Module):
    # class 0 scores the left half's brightness, class 1 the right half's: the mirror swaps them
    def forward(self, x):
        w = x.shape[3] // 2
        return torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3)) + 0.1], 1) * 10


def _left_bright() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(4, 1, 2, 4)
    x[:2, ..., :2] = 1.0  # bright left: class 0 alone, class 1 (by the 0.1 bias) once mirrored and averaged
    return x, torch.tensor([0, 0, 1, 1])


def test_hflip_tta_scores_the_mean_of_image_and_mirror():
    x, targets = _left_bright()
    plain = evaluate(LeftRight(), [(x, targets)])
    tta = evaluate(LeftRight(), [(x, targets)], tta="hflip")
    assert plain["top1"] == 100.0 and tta["top1"] == 50.0
    logits = LeftRight()(x)
    mean_p = (logits.softmax(1) + LeftRight()(x.flip(3)).softmax(1)) / 2
    assert tta["loss"] == pytest.approx(torch.nn.functional.nll_loss(mean_p.log(), targets).item(), rel=1e-6)
    with pytest.raises(ValueError, match="hflip"):
        evaluate(LeftRight(), [(x, targets)], tta="vflip")
    with pytest.raises(ValueError, match="3-D input"):
        evaluate(LeftRight(), [(x[:, 0], targets)], tta="hflip")

    class Confident(LeftRight):
        def forward(self, x):
            return super().forward(x) * 1000

    # dark images scored [0, 1000] on both views, labelled 0: both softmaxes underflow to 0 for the label,
    # yet the loss stays finite (log-space mean)
    far = evaluate(Confident(), [(x[2:], torch.tensor([0, 0]))], tta="hflip")
    assert far["top1"] == 0.0 and far["loss"] == pytest.approx(1000.0, rel=1e-4)


@pytest.mark.parametrize("tta, top1", [("none", 100.0), ("hflip", 50.0)])
def test_a_recipes_tta_scores_validation_and_test_alike(tta, top1):
    # run.tta is chosen on validation, so the test set must be scored the same way
    x, targets = _left_bright()
    images = torch.utils.data.TensorDataset(x, targets)
    cfg = load_config("fashion_mnist", [f"run.tta={tta}", "data.num_workers=0"])
    task = ClassificationTask(LeftRight(), images, images, 2, cfg, torch.device("cpu"), {}, test_set=images)
    assert task.evaluate(task.model)["top1"] == top1 and task.test(task.model)["top1"] == top1


TINY = ["--set", "model.kwargs.dims=[8,16,32]", "--set", "model.kwargs.depths=[1,1,1]",
        "--set", "data.limit_train=256", "--set", "data.limit_val=256", "--set", "optim.batch_size=64",
        "--set", "optim.reference_batch=64", "--set", "optim.epochs=2", "--set", "run.progress=false",
        "--set", "run.threads=1", "--set", "data.num_workers=0", "--set", "optim.lr=5e-3",
        "--set", "run.eval_every=1", "--set", "run.tta=none"]


@pytest.fixture
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_train_then_eval_cli(tmp_path, capsys, _keep_threads):
    # The command line in-process (argument parsing, recipe, train, summary, eval): a subprocess would only add
    # interpreter start-up; the SIGKILL and torchrun tests cover real processes.
    from convnext.cli import main

    assert main(["train", "--out", str(tmp_path), "--name", "tiny", *TINY]) == 0
    stdout = capsys.readouterr().out
    run = tmp_path / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    assert "best top-1" in stdout and str(run) in stdout
    for f in ("config.yaml", "metrics.jsonl", "best.pt", "best_ema.pt", "loss.png", "accuracy.png", "lr.png"):
        assert (run / f).exists(), f
    assert any((run / "tb").iterdir())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["type"] == "eval"] == [1, 2]
    # the checkpoint loads safely, in the official layout
    ck = torch.load(run / "best.pt", weights_only=True)
    assert "stages.0.0.dwconv.weight" in ck["model"] and ck["config"]["model"]["name"] == "convnext_fmnist"
    assert main(["eval", "--weights", str(run / "best.pt"), "--limit", "256", "--json", "--workers", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 256
    assert out["top1"] == pytest.approx(summary["best_top1"], abs=1e-6)  # same images, same transform
    assert out["ema_top1"] == pytest.approx(summary["best_ema_top1"], abs=1e-6)
    assert out["top1"] > 18  # 8 steps learn something on 10 classes (chance: 10%, 256 images)
    assert main(["eval", "--weights", str(run / "best.pt"), "--limit", "256", "--json", "--workers", "0",
                 "--tta", "hflip"]) == 0
    out_tta = json.loads(capsys.readouterr().out)
    assert out_tta["tta"] == "hflip" and out_tta["n"] == 256 and out_tta["loss"] != out["loss"]
    # without --tta, eval scores as the checkpoint's recipe did (run.tta), so a run's reported figures reproduce
    ck["config"]["run"]["tta"] = "hflip"
    torch.save(ck, tmp_path / "hflip.pt")
    assert main(["eval", "--weights", str(tmp_path / "hflip.pt"), "--limit", "256", "--json", "--workers", "0"]) == 0
    out_default = json.loads(capsys.readouterr().out)
    assert out_default["tta"] == "hflip" and out_default["top1"] == out_tta["top1"]
    assert out_default["loss"] == pytest.approx(out_tta["loss"], rel=1e-6)
    # a full training checkpoint carries the EMA weights too: the final EMA is evaluated from it
    from convnext.train.state import CheckpointManager

    last = CheckpointManager(run).latest()
    assert main(["eval", "--weights", str(last), "--limit", "256", "--json", "--workers", "0"]) == 0
    out_last = json.loads(capsys.readouterr().out)
    final = [e for e in epochs if e["type"] == "eval"][-1]
    assert out_last["top1"] == pytest.approx(final["top1"], abs=1e-6)
    assert out_last["ema_top1"] == pytest.approx(final["ema_top1"], abs=1e-6)
    # the test set, once at the end of the run: the final weights, the same as `eval --split test` gives
    assert "test top-1" in stdout and summary["test_top1"] is not None
    assert main(["eval", "--weights", str(last), "--split", "test", "--limit", "256", "--json", "--workers", "0"]) == 0
    out_test = json.loads(capsys.readouterr().out)
    assert out_test["top1"] == pytest.approx(summary["test_top1"], abs=1e-6)
    assert out_test["ema_top1"] == pytest.approx(summary["test_ema_top1"], abs=1e-6)
    assert out_test["top1"] != out_last["top1"]  # other images than the validation set's

