"""The trainer's run configuration: every option with its default and help, and which options define
a run (a checkpoint resumes only under the same values). The command line (``cli``) and the loop
(``loop``) both read it; neither imports the other for it."""
from __future__ import annotations

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
    "eval_every": 25,
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
    "probe_test_fraction": "held-out fraction for the evaluation (never trained on)",
    "eval_every": "evaluate the encoder (k-NN, few-label and full probes) every this many epochs and at the end; "
                  "0: at the end only",
    "max_steps_per_epoch": "cap on steps per epoch, 0 for none (quick runs)",
    "progress": "show a progress bar per epoch",
}

#: Options that define a run: a checkpoint is only resumed under the same values.
FINGERPRINT_KEYS = ("loss", "temperature", "batch_size", "lr", "weight_decay", "seed", "data", "queue_size",
                    "momentum", "ring_outer", "ring_inner", "ring_anneal_epochs", "hard_beta", "tau_plus", "width", "feature_dim",
                    "embed_dim", "probe_test_fraction", "max_steps_per_epoch")


class ConfigError(ValueError):
    """A bad option or config file, with a one-line reason."""
