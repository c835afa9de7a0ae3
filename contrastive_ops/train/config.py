"""The trainer's run configuration: every option with its default and help, and which options define
a run (a checkpoint resumes only under the same values). The command line (``cli``) and the loop
(``loop``) both read it; neither imports the other for it."""
from __future__ import annotations

#: Every option with its default. ``--config FILE`` (JSON, or TOML on Python >= 3.11) may set any of
#: them by name (dashes or underscores); options given on the command line win.
DEFAULTS = {
    "preset": None,
    "loss": "nt_xent",
    "backend": "auto",
    "exchange": "auto",
    "temperature": 0.2,
    "epochs": 150,
    "batch_size": 256,
    "micro_batch": 0,
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
    "ring_anneal_share": 0.0,
    "ring_anneal": "linear",
    "hard_beta": 1.0,
    "tau_plus": 0.1,
    "arch": "small",
    "norm": "batch",
    "optimizer": "adamw",
    "autocast": "auto",
    "width": 32,
    "feature_dim": 128,
    "embed_dim": 64,
    "probe_test_fraction": 0.25,
    "eval_every": 25,
    "max_steps_per_epoch": 0,
    "progress": True,
}

HELP = {
    "preset": "a set of defaults: wu2020-cifar (the seed paper's CIFAR setup); other options still win",
    "loss": "objective (info_nce is MoCo: momentum key encoder + queue)",
    "backend": "contrastive_ops backend for the loss",
    "exchange": "under torchrun: how the ranks exchange their rows, gather, ring (memory flat in the world size) "
                "or auto (docs/distributed.md); the ring loss gathers",
    "temperature": "softmax temperature (clip: initial 1/logit_scale; siglip: unused, logit scale starts at 10)",
    "epochs": "train until this many epochs are done (with --resume: in total)",
    "batch_size": "global batch size (split over ranks under torchrun)",
    "micro_batch": "0: the plain step; K > 0: the cached step (GradCache) — the encoders run K images at a time "
                   "(per rank), the loss once over the whole batch, the same gradients as the chunked forward "
                   "with memory flat in the batch, for one more encoder forward",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "seed": "seed of the model init, data order, split and augmentations",
    "out": "output folder: metrics.jsonl, checkpoint.pt, summary.json, curves.png",
    "resume": "continue from OUT/checkpoint.pt (its config must match)",
    "device": "auto, cpu, cuda or cuda:N",
    "data": ".npy/.pt image array or folder of images (default: the embedded digits)",
    "queue_size": "info_nce, moco_ring: number of queued negative keys",
    "momentum": "info_nce, moco_ring: key encoder momentum",
    "ring_outer": "ring, moco_ring: final outer fraction",
    "ring_inner": "ring, moco_ring: inner fraction",
    "ring_anneal_epochs": "ring, moco_ring: epochs over which outer goes from 1.0 to --ring-outer",
    "ring_anneal_share": "ring, moco_ring: if > 0, the share of --epochs to anneal over instead (the reference: 0.5)",
    "ring_anneal": "ring, moco_ring: anneal schedule, linear, step or exponential",
    "hard_beta": "hard_negative: concentration beta on hard negatives (>= 0)",
    "tau_plus": "hard_negative, debiased: class prior tau+ of a false negative, in [0, 1)",
    "arch": "encoder: small (a 3-block CNN) or resnet18 (3x3 CIFAR stem; torchvision's when installed)",
    "norm": "encoder normalization: batch (BatchNorm; per chunk under --micro-batch), or group or layer "
            "(batch-independent: the cached step is then the full-batch step)",
    "optimizer": "adamw, or sgd (momentum 0.9)",
    "autocast": "auto (bf16 on CUDA, off on the CPU), bf16 or off",
    "width": "small encoder: width (channels of the first conv)",
    "feature_dim": "small encoder: output dim (the evaluation's features; resnet18 has 512)",
    "embed_dim": "projection head output dim (the loss's features)",
    "probe_test_fraction": "held-out fraction for the evaluation (never trained on)",
    "eval_every": "evaluate the encoder (k-NN, few-label and full probes) every this many epochs and at the end; "
                  "0: at the end only",
    "max_steps_per_epoch": "cap on steps per epoch, 0 for none (quick runs)",
    "progress": "show a progress bar per epoch",
}

#: Options that define a run: a checkpoint is only resumed under the same values.
#: (With ``ring_anneal_share`` the schedule follows ``--epochs``, which ``--resume`` may raise.)
FINGERPRINT_KEYS = ("loss", "temperature", "batch_size", "lr", "weight_decay", "seed", "data", "queue_size",
                    "momentum", "ring_outer", "ring_inner", "ring_anneal_epochs", "ring_anneal_share", "ring_anneal",
                    "hard_beta", "tau_plus", "width", "feature_dim", "embed_dim", "probe_test_fraction",
                    "max_steps_per_epoch", "arch", "optimizer", "micro_batch", "norm")

#: ``--preset`` values: defaults that options from a config file or the command line override.
PRESETS = {
    # Wu et al. 2020 / Wu, Mosse, Zhuang, Yamins, Goodman (ICLR 2021), CIFAR-10: ResNet-18 with the 3×3
    # stem, MLP head 512 → 512 → 128, τ = 0.07, SGD lr 0.03, momentum 0.9, weight decay 1e-4, batch
    # 256, 200 epochs, Ring outer 0.1 and inner 0.1 with outer annealed linearly from 1.0 over half
    # the run (max_anneal_epoch 100 of 200), a 4096-key queue for moco_ring
    "wu2020-cifar": {
        "loss": "ring", "arch": "resnet18", "optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4,
        "batch_size": 256, "epochs": 200, "temperature": 0.07, "embed_dim": 128, "ring_outer": 0.1,
        "ring_inner": 0.1, "ring_anneal_share": 0.5, "ring_anneal": "linear", "queue_size": 4096,
        "momentum": 0.999, "eval_every": 20,
    },
}


class ConfigError(ValueError):
    """A bad option or config file, with a one-line reason."""
