"""Datasets and augmentations for the trainer.

The embedded default is scikit-learn's bundled handwritten digits (1797 8×8 images, no download).
``--data`` may also name a ``.npy``/``.pt`` array of images (``[N, H, W]`` or ``[N, C, H, W]``;
a ``.pt`` file may hold ``{"images": ..., "labels": ...}``; a ``.npy`` file beside it named
``<name>_labels.npy`` gives its labels), a folder of images with one sub-folder per class, or
CIFAR-10's own python folder (``cifar-10-batches-py``: ``data_batch_1`` … ``data_batch_5`` and
``test_batch``, all 60000 images pooled; the trainer makes its own split).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class DataError(ValueError):
    """A dataset that cannot be used, with a one-line reason."""


@dataclass
class Dataset:
    images: torch.Tensor  # [N, C, H, W] float32 in [0, 1]
    labels: torch.Tensor | None  # [N] int64, or None when unlabeled
    name: str

    def split(self, test_fraction: float, seed: int):
        """A fixed, seeded train/test split (the test part is used by the probe only)."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.images.shape[0], generator=g)
        n_test = round(test_fraction * len(order))
        pick = lambda idx: Dataset(self.images[idx], None if self.labels is None else self.labels[idx], self.name)
        return pick(order[n_test:]), pick(order[:n_test])


def _as_images(array, source: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array)
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[0] < 2 or min(x.shape[2:]) < 4:
        raise DataError(f"{source}: expected images of shape [N, H, W] or [N, C, H, W] with N >= 2 and H, W >= 4, "
                        f"got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # channels-last input
    if not (x.dtype.is_floating_point or x.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise DataError(f"{source}: images must be numeric, got dtype {x.dtype}")
    x = x.float()
    lo, hi = x.amin(), x.amax()
    if not torch.isfinite(lo) or not torch.isfinite(hi):
        raise DataError(f"{source}: images contain NaN or inf")
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def _labels(labels, n: int, source: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.dim() != 1 or y.shape[0] != n or y.dtype.is_floating_point:
        raise DataError(f"{source}: labels must be {n} integers, got shape {tuple(y.shape)} dtype {y.dtype}")
    return y.long()


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    return Dataset(images, torch.tensor(bunch.target, dtype=torch.long), "digits")


CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def _load_cifar(path: str) -> Dataset:
    """CIFAR-10's python batches (pickled dicts of ``data [10000, 3072]`` uint8 and ``labels``)."""
    import pickle

    images, labels = [], []
    for name in CIFAR_BATCHES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            continue
        with open(file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch.get(b"labels", batch.get("labels")))
    if not images:
        raise DataError(f"--data {path}: no CIFAR-10 batches ({', '.join(CIFAR_BATCHES)})")
    stacked = np.concatenate(images)
    return Dataset(_as_images(stacked, path), _labels(np.asarray(labels), stacked.shape[0], path),
                   os.path.basename(os.path.normpath(path)))


def load_path(path: str) -> Dataset:
    if not os.path.exists(path):
        raise DataError(f"--data {path}: no such file or directory")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "data_batch_1")):
            return _load_cifar(path)
        return _load_folder(path)
    if path.endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"--data {path}: not a plain numeric .npy array ({exc})") from None
        images = _as_images(array, path)
        label_file = path[: -len(".npy")] + "_labels.npy"
        labels = None
        if os.path.isfile(label_file):
            labels = _labels(np.load(label_file, allow_pickle=False), images.shape[0], label_file)
        return Dataset(images, labels, os.path.basename(path))
    if path.endswith(".pt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (any unreadable file is a one-line data error)
            raise DataError(f"--data {path}: cannot be read as a tensor file ({type(exc).__name__}: {exc})") from None
        if isinstance(obj, dict):
            if "images" not in obj:
                raise DataError(f"--data {path}: a dict must have an 'images' entry, has {sorted(obj)}")
            images = _as_images(obj["images"], path)
            labels = _labels(obj["labels"], images.shape[0], path) if "labels" in obj else None
            return Dataset(images, labels, os.path.basename(path))
        return Dataset(_as_images(obj, path), None, os.path.basename(path))
    raise DataError(f"--data {path}: expected a .npy or .pt file or a folder of images")


def _load_folder(path: str) -> Dataset:
    from PIL import Image

    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    entries = []
    if classes:
        for label, cls in enumerate(classes):
            for f in sorted(os.listdir(os.path.join(path, cls))):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    entries.append((os.path.join(path, cls, f), label))
    else:
        entries = [(os.path.join(path, f), None) for f in sorted(os.listdir(path)) if f.lower().endswith(IMAGE_SUFFIXES)]
    if len(entries) < 2:
        raise DataError(f"--data {path}: found {len(entries)} images (need at least 2)")
    first = Image.open(entries[0][0])
    size, mode = first.size, ("L" if first.mode in ("L", "1", "I", "I;16") else "RGB")
    arrays = []
    for f, _ in entries:
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert(mode).resize(size)))
    images = _as_images(np.stack(arrays), path)
    labels = torch.tensor([lab for _, lab in entries]) if classes else None
    return Dataset(images, labels, os.path.basename(os.path.normpath(path)))


def augment(images: torch.Tensor, generator: torch.Generator, *, device_noise: bool | None = None) -> torch.Tensor:
    """One random view per image, in torch: a random affine crop (scale 0.7–1.0, rotation ±15°,
    shift ±15%), brightness/contrast jitter, Gaussian noise and a random cutout square.

    Batched over ``images [n, C, H, W]`` on their own device: the per-image parameters (a few numbers
    per image) are drawn from the CPU ``generator``, the pixel work runs where the images are. The
    noise (``C·H·W`` numbers per image) is drawn from ``generator`` itself on the CPU, or, with
    ``device_noise`` (the default off the CPU), on the images' device from a generator seeded by one
    draw of ``generator`` — so a GPU run is not limited by the CPU, and every view is still a function
    of ``generator``'s state (the checkpointed one: ``--resume`` stays exact)."""
    n, c, h, w = images.shape
    device = images.device
    if device_noise is None:
        device_noise = device.type != "cpu"

    def uniform(lo, hi, *shape):
        return (lo + (hi - lo) * torch.rand(*shape, generator=generator)).to(device)

    scale = uniform(0.7, 1.0, n)
    angle = uniform(-15, 15, n) * torch.pi / 180
    shift = uniform(-0.15, 0.15, n, 2)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    views = F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
    contrast, brightness = uniform(0.7, 1.3, n, 1, 1, 1), uniform(-0.15, 0.15, n, 1, 1, 1)
    views = (views - 0.5) * contrast + 0.5 + brightness
    if device_noise:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        noise = torch.randn(views.shape, generator=torch.Generator(device).manual_seed(seed), device=device)
    else:
        noise = torch.randn(views.shape, generator=generator)
    views = views + 0.05 * noise
    side = max(1, h // 4)
    top = (torch.rand(n, generator=generator) * (h - side + 1)).long().to(device)
    left = (torch.rand(n, generator=generator) * (w - side + 1)).long().to(device)
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    hole = ((rows >= top[:, None, None]) & (rows < (top + side)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + side)[:, None, None]))
    keep = (torch.rand(n, generator=generator) < 0.5).to(device)[:, None, None] & hole
    return views.masked_fill(keep[:, None], 0.0).clamp(0.0, 1.0)
