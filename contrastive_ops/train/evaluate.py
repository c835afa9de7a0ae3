"""How good a representation is, measured as the field does, on a fixed train/test split:

* ``knn``: k-nearest-neighbour classification (k = 20, cosine distance, majority vote) of the test
  images by the training images' features;
* ``probe_1shot`` / ``probe_5shot`` / ``probe_10shot``: a logistic regression on standardized features
  fitted on 1, 5 or 10 labelled training images per class (the mean test accuracy over several
  seeded draws of those images);
* ``probe_full``: the same probe fitted on every training image.

Few labels and k-NN separate encoders that the full probe cannot: on small, easy data a linear probe
on almost any features (raw pixels, a random network) is near its ceiling. Each metric is reported
for the trained encoder beside a randomly initialized one and the raw pixels.
"""
from __future__ import annotations

import numpy as np
import torch

METRICS = ("knn", "probe_1shot", "probe_5shot", "probe_10shot", "probe_full")
SHOTS = (1, 5, 10)
KNN_K = 20
FEW_SHOT_DRAWS = 5

#: one line printed under the table: what the numbers mean
MEANING = ("Test accuracy of classifiers on frozen features: k-NN and probes with few labels per class "
           "show what pretraining learned (the full-label probe is near its ceiling on small data); "
           "a trained encoder should beat the random-init one and the raw pixels on them.")


def features(encoder, images: torch.Tensor, device, batch: int = 512) -> np.ndarray:
    """``[n, feature_dim]`` float32 features of ``images`` by the frozen ``encoder`` (eval mode)."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        out = [encoder(images[i : i + batch].to(device)).float().cpu() for i in range(0, images.shape[0], batch)]
    encoder.train(was_training)
    return torch.cat(out).numpy()


def pixels(images: torch.Tensor) -> np.ndarray:
    """The raw images, flattened: the baseline a representation has to beat."""
    return images.reshape(images.shape[0], -1).float().numpy()


def _probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = KNN_K) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, train_x.shape[0]), metric="cosine")
    knn.fit(train_x, train_y)
    return float(knn.score(test_x, test_y))


def few_shot_indices(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """``shots`` random indices per class (all of a class's indices where it has fewer)."""
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.choice(members, size=min(shots, members.size), replace=False))
    return np.sort(np.concatenate(picked))


def evaluate(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             seed: int = 0) -> dict:
    """Every metric of :data:`METRICS` for one set of features (``train_x [n, f]``, ``test_x [m, f]``;
    integer labels). The few-label draws come from ``seed``, so encoders compared on one split see
    the same labelled images."""
    out = {"knn": knn_accuracy(train_x, train_y, test_x, test_y)}
    for shots in SHOTS:
        rng = np.random.default_rng(seed * 1_000_003 + shots)
        scores = []
        for _ in range(FEW_SHOT_DRAWS):
            idx = few_shot_indices(train_y, shots, rng)
            if np.unique(train_y[idx]).size < 2:  # one class: no classifier to fit
                scores.append(float(np.mean(test_y == train_y[idx][0])))
                continue
            scores.append(_probe_accuracy(train_x[idx], train_y[idx], test_x, test_y))
        out[f"probe_{shots}shot"] = float(np.mean(scores))
    out["probe_full"] = _probe_accuracy(train_x, train_y, test_x, test_y)
    return out


def table(results: dict) -> str:
    """The printed summary: one row per metric, one column per encoder in ``results``, then
    :data:`MEANING`."""
    names = list(results)
    labels = {"knn": f"k-NN (k={KNN_K}, cosine)", "probe_full": "linear probe, all labels",
              **{f"probe_{s}shot": f"linear probe, {s} per class" for s in SHOTS}}
    width = max(len(v) for v in labels.values())
    lines = [" " * width + "  " + "  ".join(f"{n:>11}" for n in names)]
    for metric in METRICS:
        lines.append(f"{labels[metric]:<{width}}  " + "  ".join(f"{results[n][metric]:>11.4f}" for n in names))
    lines.append(MEANING)
    return "\n".join(lines)
