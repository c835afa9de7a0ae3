"""Command line of the trainer: options, config file, errors as one line and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..backends import BACKENDS
from ..core import EXCHANGES
from .config import DEFAULTS, HELP, PRESETS, ConfigError
from .model import ARCHS, NORMS
from .objectives import LOSSES, RING_SCHEDULES


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrastive-ops-train",
        description="Contrastive pretraining of a small encoder with contrastive_ops losses, then k-NN and linear "
                    "probes beside a random-init encoder and raw pixels.",
    )
    p.add_argument("--config", help="JSON or TOML file with any of the options below")
    for key, default in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        kwargs = {"default": None, "help": f"{HELP[key]} (default: {default})"}
        if key == "loss":
            kwargs["choices"] = LOSSES
        elif key == "ring_anneal":
            kwargs["choices"] = RING_SCHEDULES
        elif key == "preset":
            kwargs["choices"] = tuple(PRESETS)
        elif key == "arch":
            kwargs["choices"] = ARCHS
        elif key == "norm":
            kwargs["choices"] = NORMS
        elif key == "optimizer":
            kwargs["choices"] = ("adamw", "sgd")
        elif key == "autocast":
            kwargs["choices"] = ("auto", "bf16", "off")
        elif key == "backend":
            kwargs["choices"] = ("auto",) + BACKENDS
        elif key == "exchange":
            kwargs["choices"] = EXCHANGES
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
    from_file = _read_config(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    preset = given.get("preset", from_file.get("preset"))
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        cfg.update(PRESETS[preset])
    cfg.update(from_file)
    cfg.update(given)
    _validate(cfg)
    return cfg


def _validate(cfg: dict) -> None:
    if cfg["loss"] not in LOSSES:
        raise ConfigError(f"loss must be one of {LOSSES}, got {cfg['loss']!r}")
    if cfg["backend"] not in ("auto",) + BACKENDS:
        raise ConfigError(f"backend must be one of {('auto',) + BACKENDS}, got {cfg['backend']!r}")
    if cfg["exchange"] not in EXCHANGES:
        raise ConfigError(f"exchange must be one of {EXCHANGES}, got {cfg['exchange']!r}")
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
    micro = cfg["micro_batch"]
    if isinstance(micro, bool) or not isinstance(micro, int) or micro < 0:
        raise ConfigError(f"micro_batch must be an integer >= 0 (0: the plain step), got {micro!r}")
    for key, allowed in (("arch", ARCHS), ("norm", NORMS), ("optimizer", ("adamw", "sgd")),
                         ("autocast", ("auto", "bf16", "off"))):
        if cfg[key] not in allowed:
            raise ConfigError(f"{key} must be one of {allowed}, got {cfg[key]!r}")
    if cfg["ring_anneal"] not in RING_SCHEDULES:
        raise ConfigError(f"ring_anneal must be one of {RING_SCHEDULES}, got {cfg['ring_anneal']!r}")
    share = cfg["ring_anneal_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(f"ring_anneal_share must be in [0, 1], got {share!r}")
    if isinstance(cfg["eval_every"], bool) or not isinstance(cfg["eval_every"], int) or cfg["eval_every"] < 0:
        raise ConfigError(f"eval_every must be an integer >= 0, got {cfg['eval_every']!r}")
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
        if "eval" in summary:
            from .evaluate import table

            print(f"evaluation on {summary['eval_test_images']} held-out images:")
            print(table(summary["eval"]))
            print(f"linear probe accuracy: {summary['probe_accuracy']:.4f} "
                  f"(random-init encoder: {summary['random_init_probe_accuracy']:.4f})")
        print(f"results in {cfg['out']}")
