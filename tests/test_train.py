"""The bundled trainer: every objective runs (plain and with --micro-batch), resume equals an
uninterrupted run, bad input fails in one line, and it runs under torchrun with two gloo processes."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from contrastive_ops.train import cli, loop
from contrastive_ops.train.objectives import LOSSES

QUICK = ["--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "64", "--progress", "false"]


def run_main(args):
    """Run the CLI in-process; returns the exit code (0 when it returns normally)."""
    try:
        cli.main(args)
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.mark.parametrize("loss", LOSSES)
def test_each_objective_trains_and_writes_everything(loss, tmp_path, capsys):
    out = tmp_path / loss
    assert run_main(["--loss", loss, "--out", str(out), "--queue-size", "128"] + QUICK) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert set(row) >= {"epoch", "loss", "mi_lower_bound", "lr", "samples_per_s", "backend"}
    assert row["backend"] == "chunked" and np.isfinite(row["loss"]) and row["samples_per_s"] > 0
    assert abs(row["mi_lower_bound"] - (np.log(row["candidates"]) - row["loss"])) < 1e-9
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["probe_accuracy"] <= 1.0 and 0.0 <= summary["random_init_probe_accuracy"] <= 1.0
    assert set(summary["eval"]) == {"trained", "random_init", "pixels"}
    for metrics in summary["eval"].values():
        assert set(metrics) == {"knn", "probe_1shot", "probe_5shot", "probe_10shot", "probe_full"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert summary["probe_accuracy"] == summary["eval"]["trained"]["probe_full"]
    assert (out / "curves.png").stat().st_size > 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    printed = capsys.readouterr().out
    assert "linear probe accuracy" in printed and "k-NN (k=20, cosine)" in printed and "random_init" in printed


@pytest.mark.parametrize("loss,extra", [("info_nce", []), ("ring", []), ("moco_ring", ["--micro-batch", "24"])])
def test_resume_equals_uninterrupted(loss, extra, tmp_path):
    base = ["--loss", loss, "--queue-size", "128", "--max-steps-per-epoch", "2", "--batch-size", "64",
            "--progress", "false", "--ring-anneal-epochs", "2"] + extra
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_main(base + ["--out", str(whole), "--epochs", "3"]) == 0
    assert run_main(base + ["--out", str(parts), "--epochs", "1"]) == 0
    assert run_main(base + ["--out", str(parts), "--epochs", "3", "--resume"]) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(parts / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert a["objective"].keys() == b["objective"].keys()
    for key in a["objective"]:
        assert torch.equal(a["objective"][key], b["objective"][key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]
    rows_a = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (parts / "metrics.jsonl").read_text().splitlines()]
    assert strip(rows_a) == strip(rows_b) and len(rows_a) == 3
    assert json.loads((whole / "summary.json").read_text())["probe_accuracy"] == \
        json.loads((parts / "summary.json").read_text())["probe_accuracy"]


def test_user_arrays_and_image_folders(tmp_path):
    from PIL import Image

    images = (np.random.rand(80, 10, 10) * 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", images)
    torch.save({"images": torch.tensor(images), "labels": torch.arange(80) % 4}, tmp_path / "x.pt")
    for c in range(2):
        (tmp_path / "folder" / f"class{c}").mkdir(parents=True)
        for i in range(20):
            Image.fromarray(images[c * 20 + i]).save(tmp_path / "folder" / f"class{c}" / f"{i}.png")
    for data, loss in (("x.npy", "nt_xent"), ("x.pt", "supcon"), ("folder", "clip")):
        out = tmp_path / f"out_{loss}"
        code = run_main(["--data", str(tmp_path / data), "--loss", loss, "--out", str(out), "--epochs", "1",
                         "--batch-size", "16", "--max-steps-per-epoch", "1", "--progress", "false"])
        assert code == 0, data
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["probe_accuracy"] is None) == (data == "x.npy")


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "contrastive_ops.train", *args], capture_output=True, text=True, check=False,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("case", ["missing_data", "bad_shape", "unknown_loss", "unknown_backend",
                                  "unavailable_backend", "labels_needed", "bad_config", "resume_other_config"])
def test_bad_input_fails_in_one_line(case, tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(10))
    np.save(tmp_path / "imgs.npy", np.random.rand(40, 8, 8))
    (tmp_path / "bad.json").write_text('{"learning_rate": 3}')
    out = str(tmp_path / "run")
    args = {
        "missing_data": ["--data", str(tmp_path / "nope.npy")],
        "bad_shape": ["--data", str(tmp_path / "flat.npy")],
        "unknown_loss": ["--loss", "triplet"],
        "unknown_backend": ["--backend", "fastest"],
        "unavailable_backend": ["--backend", "cuda"],
        "labels_needed": ["--data", str(tmp_path / "imgs.npy"), "--loss", "supcon", "--batch-size", "8"],
        "bad_config": ["--config", str(tmp_path / "bad.json")],
        "resume_other_config": ["--resume", "--temperature", "0.5"],
    }[case]
    if case == "resume_other_config":
        assert run_main(["--out", out] + QUICK) == 0
        before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    proc = _cli(args + ["--out", out, "--progress", "false"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert "Traceback" not in proc.stderr
    assert lines and "error" in lines[-1]
    if case == "resume_other_config":
        assert "temperature=0.2 (now 0.5)" in lines[-1]
        assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_checkpoint_write_is_atomic(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    loop._save_atomic({"epoch": 1}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        loop._save_atomic({"bad": lambda: None}, path)  # cannot be pickled: fails mid-write
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_config_file_sets_options_and_cli_wins(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"loss": "dcl", "batch-size": 32, "temperature": 0.3}))
    cfg = cli.resolve_config(["--config", str(tmp_path / "c.json"), "--temperature", "0.4"])
    assert (cfg["loss"], cfg["batch_size"], cfg["temperature"]) == ("dcl", 32, 0.4)


@pytest.mark.parametrize("extra", [[], ["--micro-batch", "12"], ["--exchange", "ring"]])
def test_trainer_under_torchrun_two_processes(extra, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "contrastive_ops.train", "--out", str(out), "--loss", "clip"] + QUICK + extra
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "summary.json").read_text())["probe_accuracy"] is not None


@pytest.mark.parametrize("args,match", [(["--tau-plus", "1"], "tau_plus must be in"),
                                        (["--hard-beta", "-0.5"], "hard_beta must be a number >= 0"),
                                        (["--micro-batch", "-1"], "micro_batch must be an integer >= 0"),
                                        (["--config", "{exchange}"], "exchange must be one of")])
def test_new_loss_options_are_validated(args, match, tmp_path):
    if args[0] == "--config":  # a value the command line's choices would refuse first
        (tmp_path / "c.json").write_text(json.dumps({"exchange": "all"}))
        args = ["--config", str(tmp_path / "c.json")]
    with pytest.raises(cli.ConfigError, match=match):
        cli.resolve_config(args)


def test_checkpoint_from_before_an_option_resumes_with_its_default(tmp_path):
    """A checkpoint whose config lacks an option added later (hard_beta, tau_plus, micro_batch, norm) had
    its default."""
    out = tmp_path / "run"
    base = ["--out", str(out), "--max-steps-per-epoch", "1", "--batch-size", "32", "--progress", "false"]
    assert run_main(base + ["--epochs", "1"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    for key in ("hard_beta", "tau_plus", "micro_batch", "norm"):
        del ckpt["config"][key]
    torch.save(ckpt, out / "checkpoint.pt")
    assert run_main(base + ["--epochs", "2", "--resume"]) == 0
    assert run_main(base + ["--epochs", "3", "--resume", "--tau-plus", "0.3"]) == 2


def test_evaluation_every_few_epochs_and_its_metrics(tmp_path):
    out = tmp_path / "eval"
    args = ["--out", str(out), "--epochs", "2", "--eval-every", "1", "--max-steps-per-epoch", "2", "--batch-size", "64",
            "--progress", "false"]
    assert run_main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r["eval"]) for r in rows] == [sorted(["knn", "probe_1shot", "probe_5shot", "probe_10shot",
                                                          "probe_full"])] * 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["trained"] == rows[-1]["eval"]  # the last evaluated epoch is the final encoder


def test_evaluation_metrics_on_separable_and_random_features():
    """k-NN and the probes find well-separated classes and stay at chance on features without signal;
    the few-label draws take ``shots`` images of every class."""
    from contrastive_ops.train import evaluate

    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    labels = np.repeat(np.arange(4), 60)
    centers = rng.normal(size=(4, 16)) * 10
    separable = centers[labels] + rng.normal(size=(240, 16))
    train, test = np.arange(240) % 4 != 0, np.arange(240) % 4 == 0
    good = evaluate.evaluate(separable[train], labels[train], separable[test], labels[test])
    assert min(good.values()) > 0.95, good
    noise = rng.normal(size=(240, 16))
    bad = evaluate.evaluate(noise[train], labels[train], noise[test], labels[test])
    assert max(bad.values()) < 0.6, bad
    idx = evaluate.few_shot_indices(labels, 5, rng)
    assert np.bincount(labels[idx]).tolist() == [5, 5, 5, 5]


@pytest.mark.long
def test_experiment_compares_objectives_over_paired_seeds(tmp_path, capsys):
    from contrastive_ops.train import experiment

    out = tmp_path / "cmp"
    report = experiment.run(["--compare", "nt_xent,dcl", "--seeds", "2", "--out", str(out), "--epochs", "1",
                             "--max-steps-per-epoch", "2", "--batch-size", "64", "--progress", "false",
                             "--eval-every", "0"])
    data = json.loads((out / "comparison.json").read_text())
    assert set(data["runs"]) == {"nt_xent", "dcl", "random_init", "pixels"}
    assert all(len(runs) == 2 for runs in data["runs"].values())
    # seed 0's nt_xent run is the trainer's own run with that seed
    own = json.loads((out / "nt_xent" / "seed0" / "summary.json").read_text())
    assert data["runs"]["nt_xent"][0] == own["eval"]["trained"]
    d = data["paired"]["dcl"]["knn"]
    diffs = [b["knn"] - a["knn"] for a, b in zip(data["runs"]["nt_xent"], data["runs"]["dcl"])]
    assert abs(d["mean"] - float(np.mean(diffs))) < 1e-12
    markdown = (out / "comparison.md").read_text()
    assert "dcl − nt_xent, knn:" in markdown and "the seed noise." in markdown and report["markdown"] == markdown
    assert (out / "comparison.png").stat().st_size > 0
    with pytest.raises(cli.ConfigError, match="--seed is set by the experiment"):
        experiment.run(["--compare", "nt_xent", "--seed", "3", "--out", str(out)])


def test_ring_schedules():
    from contrastive_ops.train.objectives import ring_outer

    cfg = {"epochs": 200, "ring_outer": 0.1, "ring_anneal_epochs": 10.0, "ring_anneal_share": 0.5,
           "ring_anneal": "linear"}
    assert ring_outer(cfg, 0.0) == 1.0 and ring_outer(cfg, 100.0) == pytest.approx(0.1)
    assert ring_outer(cfg, 50.0) == pytest.approx(0.55) and ring_outer(cfg, 150.0) == pytest.approx(0.1)
    assert ring_outer({**cfg, "ring_anneal_share": 0.0}, 5.0) == pytest.approx(0.55)  # 10 epochs
    step = {**cfg, "ring_anneal": "step"}
    assert ring_outer(step, 99.0) == 1.0 and ring_outer(step, 100.0) == pytest.approx(0.1)
    exponential = {**cfg, "ring_anneal": "exponential"}
    assert ring_outer(exponential, 50.0) == pytest.approx(0.1 ** 0.5)
    with pytest.raises(cli.ConfigError, match="ring_anneal must be one of"):
        cli._validate({**cli.DEFAULTS, "ring_anneal": "cos"})
    with pytest.raises(cli.ConfigError, match="ring_anneal_share must be in"):
        cli._validate({**cli.DEFAULTS, "ring_anneal_share": 2})


@pytest.mark.parametrize("loss", ["ring", "moco_ring"])
def test_seed_paper_preset_end_to_end_on_tiny_cifar(loss, tmp_path, capsys):
    """--preset wu2020-cifar (ResNet-18 with the CIFAR stem, SGD, the reference's Ring schedule) on a
    CIFAR-10 python folder of random images."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 40), ("test_batch", 24)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    out = tmp_path / "run"
    args = ["--preset", "wu2020-cifar", "--loss", loss, "--data", str(folder), "--out", str(out), "--epochs", "2",
            "--max-steps-per-epoch", "1", "--batch-size", "16", "--queue-size", "64", "--eval-every", "1",
            "--progress", "false"]
    assert run_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cifar-10-batches-py" and summary["eval_test_images"] == 16
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["ring_outer"] for r in rows] == [1.0, pytest.approx(0.1)]  # annealed over half of the 2 epochs
    cfg = cli.resolve_config(args)
    assert (cfg["arch"], cfg["optimizer"], cfg["lr"], cfg["temperature"], cfg["embed_dim"]) == (
        "resnet18", "sgd", 0.03, 0.07, 128)
    assert cfg["epochs"] == 2  # the command line wins over the preset
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert any(v.dim() == 4 and v.shape[1:] == (3, 3, 3) for v in ckpt["objective"].values())  # the 3×3 stem


@pytest.mark.parametrize("loss", LOSSES)
def test_each_objective_trains_with_micro_batches(loss, tmp_path):
    """--micro-batch 12 on batches of 32 (chunks of 12, 12 and 8), each normalization in turn (unlabelled
    images, so no evaluation, except for supcon)."""
    images = torch.rand(160, 8, 8)
    data = tmp_path / ("x.pt" if loss == "supcon" else "x.npy")
    if loss == "supcon":
        torch.save({"images": images, "labels": torch.arange(160) % 4}, data)
    else:
        np.save(data, images.numpy())
    out = tmp_path / "run"
    norm = ("batch", "group", "layer")[LOSSES.index(loss) % 3]
    assert run_main(["--loss", loss, "--data", str(data), "--out", str(out), "--queue-size", "64", "--micro-batch", "12",
                     "--norm", norm, "--batch-size", "32", "--epochs", "2", "--max-steps-per-epoch", "2",
                     "--progress", "false"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ckpt["config"]["micro_batch"], ckpt["config"]["norm"]) == (12, norm)


def test_micro_batches_follow_the_plain_run_with_a_batch_independent_encoder(tmp_path):
    """With GroupNorm the cached step is the full-batch step: the same losses, to float32 rounding."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((256, 8, 8)))
    losses = {}
    for micro in ("0", "24"):
        out = tmp_path / f"micro{micro}"
        assert run_main(["--data", str(tmp_path / "x.npy"), "--out", str(out), "--norm", "group", "--micro-batch", micro,
                         "--batch-size", "64", "--epochs", "2", "--max-steps-per-epoch", "3", "--progress", "false"]) == 0
        losses[micro] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses["0"] == pytest.approx(losses["24"], rel=1e-4)


def test_augmentation_on_the_device_path_is_a_function_of_the_generator():
    """Off the CPU the noise comes from a device generator seeded by the augmentation generator (run
    here on the CPU with ``device_noise=True``): the views are a function of the generator's state,
    and the generator advances by the same draws whatever the images."""
    from contrastive_ops.train.data import augment

    x = torch.rand(20, 3, 8, 8)
    views = []
    for images in (x, x, torch.rand(20, 3, 8, 8)):
        g = torch.Generator().manual_seed(5)
        views.append(augment(images, g, device_noise=True))
        views.append(torch.rand(3, generator=g))
    assert torch.equal(views[0], views[2]) and not torch.equal(views[0], views[4])
    assert torch.equal(views[1], views[3]) and torch.equal(views[1], views[5])
    assert views[0].shape == x.shape and 0.0 <= float(views[0].min()) and float(views[0].max()) <= 1.0


@pytest.mark.parametrize("queue,batch", [(8, 3), (8, 8), (8, 21), (5, 13)])
def test_moco_queue_is_a_fifo_even_when_a_batch_outnumbers_it(queue, batch):
    """The queue after two batches equals writing every key one after another into the ring buffer."""
    from types import SimpleNamespace

    from contrastive_ops.train.objectives import MoCo

    state = SimpleNamespace(group=None, queue=torch.zeros(queue, 2), queue_ptr=torch.zeros((), dtype=torch.long))
    expected, ptr = torch.zeros(queue, 2), 0
    for step in range(2):
        keys = torch.arange(batch * 2, dtype=torch.float32).reshape(batch, 2) + 100 * step
        MoCo._enqueue(state, keys)
        for row in keys:  # one key at a time
            expected[ptr] = row
            ptr = (ptr + 1) % queue
    assert torch.equal(state.queue, expected)
    assert int(state.queue_ptr) == ptr
