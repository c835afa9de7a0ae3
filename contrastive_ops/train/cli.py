"""Command line of the trainer: options, config file, errors as one line and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..backends import BACKENDS
from .objectives import LOSSES

#: Every option with its default. ``--config FILE`` (JSON, or TOML on Python >= 3.11) may set any of
#: them by name (dashes or underscores); options given on the command line win.
DEFAULTS = {
    "loss": "nt_xent",
    "backend": "auto",
    "temperature": 0.2,
    "epochs": 150,
    "batch_size": 256,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "seed": 0,
    "out": "runs/contrastive",
    "resume": False,
    "device": "auto",
    "data": None,
    "queue_size": 1024,
    "momentum": 0.99,
    "ring_outer": 0.1,
    "ring_inner": 0.1,
    "ring_anneal_epochs": 10.0,
    "hard_beta": 1.0,
    "tau_plus": 0.1,
    "width": 32,
    "feature_dim": 128,
    "embed_dim": 64,
    "probe_test_fraction": 0.25,
    "max_steps_per_epoch": 0,
    "progress": True,
}

HELP = {
    "loss": "objective (info_nce is MoCo: momentum key encoder + queue)",
    "backend": "contrastive_ops backend for the loss",
    "temperature": "softmax temperature (clip: initial 1/logit_scale; siglip: unused, logit scale starts at 10)",
    "epochs": "train until this many epochs are done (with --resume: in total)",
    "batch_size": "global batch size (split over ranks under torchrun)",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "seed": "seed of the model init, data order, split and augmentations",
    "out": "output folder: metrics.jsonl, checkpoint.pt, summary.json, curves.png",
    "resume": "continue from OUT/checkpoint.pt (its config must match)",
    "device": "auto, cpu, cuda or cuda:N",
    "data": ".npy/.pt image array or folder of images (default: the embedded digits)",
    "queue_size": "info_nce: number of queued negative keys",
    "momentum": "info_nce: key encoder momentum",
    "ring_outer": "ring: final outer fraction",
    "ring_inner": "ring: inner fraction",
    "ring_anneal_epochs": "ring: epochs over which outer goes from 1.0 to --ring-outer",
    "hard_beta": "hard_negative: concentration beta on hard negatives (>= 0)",
    "tau_plus": "hard_negative, debiased: class prior tau+ of a false negative, in [0, 1)",
    "width": "encoder width (channels of the first conv)",
    "feature_dim": "encoder output dim (the probe's features)",
    "embed_dim": "projection head output dim (the loss's features)",
    "probe_test_fraction": "held-out fraction for the linear probe (never trained on)",
    "max_steps_per_epoch": "cap on steps per epoch, 0 for none (quick runs)",
    "progress": "show a progress bar per epoch",
}

#: Options that define a run: a checkpoint is only resumed under the same values.
FINGERPRINT_KEYS = ("loss", "temperature", "batch_size", "lr", "weight_decay", "seed", "data", "queue_size",
                    "momentum", "ring_outer", "ring_inner", "ring_anneal_epochs", "hard_beta", "tau_plus", "width", "feature_dim",
                    "embed_dim", "probe_test_fraction", "max_steps_per_epoch")


class ConfigError(ValueError):
    """A bad option or config file, with a one-line reason."""


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrastive-ops-train",
        description="Contrastive pretraining of a small encoder with contrastive_ops losses, then a linear probe.",
    )
    p.add_argument("--config", help="JSON or TOML file with any of the options below")
    for key, default in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        kwargs = {"default": None, "help": f"{HELP[key]} (default: {default})"}
        if key == "loss":
            kwargs["choices"] = LOSSES
        elif key == "backend":
            kwargs["choices"] = ("auto",) + BACKENDS
        elif key == "resume":
            kwargs.update(action="store_const", const=True)
        elif key == "progress":
            kwargs["type"] = _bool
        elif default is not None and not isinstance(default, bool):
            kwargs["type"] = type(default)
        p.add_argument(flag, **kwargs)
    return p


def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file")
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                raw = tomllib.load(f)
        else:
            with open(path) as f:
                raw = json.load(f)
    except Exception as exc:  # noqa: BLE001  (any parse failure is a one-line config error)
        raise ConfigError(f"--config {path}: cannot be parsed ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config {path}: expected a table of options, got {type(raw).__name__}")
    cfg = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in DEFAULTS:
            raise ConfigError(f"--config {path}: unknown option {key!r}")
        cfg[name] = value
    return cfg


def resolve_config(argv=None) -> dict:
    args = parser().parse_args(argv)
    cfg = dict(DEFAULTS)
    if args.config:
        cfg.update(_read_config(args.config))
    cfg.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    _validate(cfg)
    return cfg


def _validate(cfg: dict) -> None:
    if cfg["loss"] not in LOSSES:
        raise ConfigError(f"loss must be one of {LOSSES}, got {cfg['loss']!r}")
    if cfg["backend"] not in ("auto",) + BACKENDS:
        raise ConfigError(f"backend must be one of {('auto',) + BACKENDS}, got {cfg['backend']!r}")
    for key in ("epochs", "batch_size", "queue_size", "width", "feature_dim", "embed_dim"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["batch_size"] < 2:
        raise ConfigError(f"batch_size must be at least 2, got {cfg['batch_size']}")
    for key in ("temperature", "lr"):
        if not isinstance(cfg[key], (int, float)) or not cfg[key] > 0:
            raise ConfigError(f"{key} must be a positive number, got {cfg[key]!r}")
    for key in ("ring_outer", "ring_inner", "momentum"):
        if not isinstance(cfg[key], (int, float)) or not 0 <= cfg[key] <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {cfg[key]!r}")
    if isinstance(cfg["hard_beta"], bool) or not isinstance(cfg["hard_beta"], (int, float)) or not cfg["hard_beta"] >= 0:
        raise ConfigError(f"hard_beta must be a number >= 0, got {cfg['hard_beta']!r}")
    if isinstance(cfg["tau_plus"], bool) or not isinstance(cfg["tau_plus"], (int, float)) or not 0 <= cfg["tau_plus"] < 1:
        raise ConfigError(f"tau_plus must be in [0, 1), got {cfg['tau_plus']!r}")
    if not 0 < cfg["probe_test_fraction"] < 1:
        raise ConfigError(f"probe_test_fraction must be in (0, 1), got {cfg['probe_test_fraction']!r}")


def main(argv=None) -> None:
    from ..backends import BackendUnavailableError
    from .data import DataError
    from .loop import CheckpointError, train

    try:
        cfg = resolve_config(argv)
        summary = train(cfg)
    except (ConfigError, DataError, CheckpointError, BackendUnavailableError) as exc:
        print(f"contrastive-ops-train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("contrastive-ops-train: interrupted (the last complete epoch's checkpoint is kept)", file=sys.stderr)
        sys.exit(130)
    if summary is not None:
        probe, rand = summary.get("probe_accuracy"), summary.get("random_init_probe_accuracy")
        if probe is not None:
            print(f"linear probe accuracy: {probe:.4f} (random-init encoder: {rand:.4f})")
        print(f"results in {cfg['out']}")
