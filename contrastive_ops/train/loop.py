"""The training loop: epochs of two-view batches, atomic checkpoints, metrics, the evaluation
(k-NN and linear probes, see :mod:`.evaluate`) beside a random-init encoder and raw pixels, plots.

Reproducibility: the model init, the split, each epoch's data order and the augmentations all come
from seeded generators whose state is checkpointed, so ``--resume`` continues exactly where an
uninterrupted run would be.
"""
from __future__ import annotations

import json
import os
import time

import torch

from ..backends import resolve
from . import evaluate, objectives
from .config import DEFAULTS, FINGERPRINT_KEYS
from .data import DataError, Dataset, augment, load_digits, load_path
from .model import ContrastiveModel
from .step import TrainStep

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed, with a one-line reason."""


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: no CUDA GPU is available")
    return device


def _distributed(device: torch.device):
    """``(group, rank, world)``; initializes torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.group.WORLD, dist.get_rank(), dist.get_world_size()


def _save_atomic(obj, path: str) -> None:
    """Write to a temporary file and rename: a checkpoint is either complete or absent."""
    tmp = path + ".tmp"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_lines(path: str, rows) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(tmp, path)


def _load_checkpoint(path: str, fingerprint: dict) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a damaged file is a one-line error)
        raise CheckpointError(f"--resume: {path} cannot be loaded ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"--resume: {path} is not a contrastive-ops-train checkpoint")
    saved = ckpt["config"]
    # an option a checkpoint predates had its default value then
    saved = {k: saved.get(k, DEFAULTS[k]) for k in FINGERPRINT_KEYS}
    diff = [f"{k}={saved[k]!r} (now {fingerprint[k]!r})" for k in FINGERPRINT_KEYS if saved[k] != fingerprint[k]]
    if diff:
        raise CheckpointError(f"--resume: {path} comes from a different config: " + ", ".join(diff))
    return ckpt


def _evaluation(train: Dataset, test: Dataset, seed: int):
    """A function of an encoder returning its :data:`evaluate.METRICS` on this split (or of None: the
    raw pixels)."""
    train_y, test_y = train.labels.numpy(), test.labels.numpy()

    def run(encoder, device) -> dict:
        if encoder is None:
            train_x, test_x = evaluate.pixels(train.images), evaluate.pixels(test.images)
        else:
            train_x, test_x = (evaluate.features(encoder, x.images, device) for x in (train, test))
        return evaluate.evaluate(train_x, train_y, test_x, test_y, seed=seed)

    return run


def _plot(history, path: str, baselines: dict | None = None) -> None:
    """Loss and the InfoNCE bound per epoch; with evaluations, k-NN and the 1-shot probe of the trained
    encoder per evaluated epoch beside the random-init encoder's and the pixels' (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    evaluated = [h for h in history if "eval" in h]
    panels = 3 if evaluated else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5))
    ax1, ax2 = axes[0], axes[1]
    ax1.plot(epochs, [h["loss"] for h in history], marker="o", ms=3)
    ax1.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax2.plot(epochs, [h["mi_lower_bound"] for h in history], marker="o", ms=3, color="tab:green")
    ax2.set(xlabel="epoch", ylabel="nats", title="InfoNCE bound log K − loss")
    if evaluated:
        ax3 = axes[2]
        for metric, color in (("knn", "tab:blue"), ("probe_1shot", "tab:orange")):
            ax3.plot([h["epoch"] for h in evaluated], [h["eval"][metric] for h in evaluated], marker="o", ms=3,
                     color=color, label=f"{metric} (trained)")
            for name, style in (("random_init", "--"), ("pixels", ":")):
                if baselines and name in baselines:
                    ax3.axhline(baselines[name][metric], color=color, ls=style, lw=1, label=f"{metric} ({name})")
        ax3.set(xlabel="epoch", ylabel="test accuracy", title="k-NN and 1-shot probe")
        ax3.legend(fontsize=6)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _autocast(mode: str, device: torch.device):
    """The forward's autocast context: bf16 on CUDA for ``auto``/``bf16``, none for ``off`` (or on the
    CPU with ``auto``)."""
    import contextlib

    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train(cfg: dict) -> dict | None:
    device = _device(cfg["device"])
    backend = resolve(cfg["backend"], device)  # fails early, with the reason, if it cannot run here
    dataset = load_digits() if cfg["data"] is None else load_path(cfg["data"])
    needs_labels = objectives.OBJECTIVES[cfg["loss"]].needs_labels
    if needs_labels and dataset.labels is None:
        raise DataError(f"--loss {cfg['loss']} needs labels, and {dataset.name} has none")
    train_set, test_set = dataset.split(cfg["probe_test_fraction"], cfg["seed"])
    group, rank, world = _distributed(device)
    if cfg["batch_size"] % world:
        raise DataError(f"--batch-size {cfg['batch_size']} is not divisible by the {world} processes")
    if cfg["batch_size"] > train_set.images.shape[0]:
        raise DataError(f"--batch-size {cfg['batch_size']} exceeds the {train_set.images.shape[0]} training images")

    torch.manual_seed(cfg["seed"])
    model = ContrastiveModel(dataset.images.shape[1], cfg["width"], cfg["feature_dim"], cfg["embed_dim"], cfg["arch"],
                             cfg["norm"])
    objective = objectives.build(cfg["loss"], model, cfg, group).to(device)
    if device.type == "cuda":  # NHWC convolutions (tensor cores); the loss sees [N, D] features either way
        objective.to(memory_format=torch.channels_last)
    trainable = [p for p in objective.parameters() if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    else:
        optimizer = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    autocast = _autocast(cfg["autocast"], device)
    aug_rng = torch.Generator().manual_seed(cfg["seed"] + 1)
    fingerprint = {k: cfg[k] for k in FINGERPRINT_KEYS}
    os.makedirs(cfg["out"], exist_ok=True)
    ckpt_path = os.path.join(cfg["out"], "checkpoint.pt")
    metrics_path = os.path.join(cfg["out"], "metrics.jsonl")
    history, start_epoch = [], 0
    if cfg["resume"]:
        ckpt = _load_checkpoint(ckpt_path, fingerprint)
        objective.load_state_dict(ckpt["objective"])
        optimizer.load_state_dict(ckpt["optimizer"])
        aug_rng.set_state(ckpt["aug_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        history, start_epoch = list(ckpt["history"]), int(ckpt["epoch"])
    if rank == 0:
        _write_lines(metrics_path, history)  # what the checkpoint holds; later epochs are appended

    evaluation = _evaluation(train_set, test_set, cfg["seed"]) if dataset.labels is not None else None
    trainer = TrainStep(objective, optimizer, micro_batch=cfg["micro_batch"], group=group, device=device,
                        autocast=autocast)
    images, labels = train_set.images, train_set.labels
    n, per_rank = images.shape[0], cfg["batch_size"] // world
    steps = n // cfg["batch_size"]  # drop the last partial batch: every step has the same candidates
    if cfg["max_steps_per_epoch"]:
        steps = min(steps, cfg["max_steps_per_epoch"])
    bar = None
    if cfg["progress"] and rank == 0:
        from tqdm import tqdm

        bar = tqdm
    for epoch in range(start_epoch, cfg["epochs"]):
        objective.train()
        order = _epoch_order(n, cfg["seed"], epoch)
        started, total, count = time.perf_counter(), 0.0, 0
        iterator = range(steps)
        if bar is not None:
            iterator = bar(iterator, desc=f"epoch {epoch + 1}/{cfg['epochs']} [{cfg['loss']}/{backend}]", leave=False)
        for step in iterator:
            idx = order[step * cfg["batch_size"] : (step + 1) * cfg["batch_size"]][rank * per_rank : (rank + 1) * per_rank]
            batch = images[idx].to(device)  # augmented where it is trained (data.augment)
            v1, v2 = augment(batch, aug_rng), augment(batch, aug_rng)
            y = labels[idx].to(device) if labels is not None else None
            objective.set_progress(epoch + step / steps)
            loss = trainer.forward(v1, v2, y)
            if not torch.isfinite(loss):
                trainer.discard()
                raise DataError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            trainer.backward(loss)
            trainer.step()
            total += loss.item()
            count += 1
            if bar is not None:
                iterator.set_postfix(loss=f"{total / count:.4f}")
        seconds = time.perf_counter() - started
        mean_loss = total / max(count, 1)
        row = {
            "epoch": epoch + 1,
            "loss": mean_loss,
            "mi_lower_bound": objectives.mi_lower_bound(mean_loss, objective.candidates),
            "candidates": objective.candidates,
            "lr": optimizer.param_groups[0]["lr"],
            "samples_per_s": count * cfg["batch_size"] / max(seconds, 1e-9),
            "backend": backend,
            "seconds": seconds,
        }
        if cfg["loss"] in ("ring", "moco_ring"):
            row["ring_outer"] = objective.outer
        if rank == 0 and evaluation is not None and cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0:
            row["eval"] = evaluation(model.encoder, device)  # (the summary evaluates the final encoder anyway)
        history.append(row)
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            _save_atomic({
                "format": CHECKPOINT_FORMAT, "config": fingerprint, "epoch": epoch + 1,
                "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
                "aug_rng": aug_rng.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
            }, ckpt_path)
            print(f"epoch {epoch + 1}/{cfg['epochs']}: loss {mean_loss:.4f}, "
                  f"{row['samples_per_s']:.0f} samples/s", flush=True)
    if group is not None:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return None
    summary = {"loss": cfg["loss"], "backend": backend, "epochs": cfg["epochs"], "dataset": dataset.name,
               "final_loss": history[-1]["loss"] if history else None,
               "probe_accuracy": None, "random_init_probe_accuracy": None}
    baselines = None
    if evaluation is not None:
        done = history and "eval" in history[-1] and history[-1]["epoch"] == cfg["epochs"]
        trained = history[-1]["eval"] if done else evaluation(model.encoder, device)
        torch.manual_seed(cfg["seed"])  # the trained model's own initialization
        random_model = ContrastiveModel(dataset.images.shape[1], cfg["width"], cfg["feature_dim"], cfg["embed_dim"],
                                        cfg["arch"], cfg["norm"])
        baselines = {"random_init": evaluation(random_model.encoder.to(device), device),
                     "pixels": evaluation(None, device)}
        summary["eval"] = {"trained": trained, **baselines}
        summary["eval_test_images"] = int(test_set.images.shape[0])
        summary["probe_accuracy"] = trained["probe_full"]
        summary["random_init_probe_accuracy"] = baselines["random_init"]["probe_full"]
    else:
        summary["note"] = "no labels: the evaluation was skipped"
    if history:
        _plot(history, os.path.join(cfg["out"], "curves.png"), baselines)
    with open(os.path.join(cfg["out"], "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
