"""The data `initprobe train` learns, all of it local (nothing is downloaded at run time):

- digits: scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes; the `train` extra). A fixed
  fifth of each class is held out (the same split on every machine: numpy's PCG64 from SPLIT_SEED, not
  scikit-learn's splitter, whose draws may change between its versions); every pixel is standardized with the
  training images' mean and std (a pixel that is constant there keeps std 1). An MLP reads 64 numbers, a CNN a
  1x8x8 image.
- teacher: Gaussian inputs x ~ N(0, I) labelled by a random deep tanh network (weights N(0, 2/fan_in), no biases,
  a readout N(0, 1/width), the label its largest logit). Near a tie between two logits a label is noise to any
  student, so twice as many inputs are drawn and the half with the largest gap between the top two logits is kept:
  margin filtering, which makes the task learnable and still not linear: at the default sizes a ReLU student of
  depth 4 reaches 0.89 held-out accuracy in 2,000 steps, logistic regression 0.86. The teacher and its data come
  from TEACHER_SEED: every seed of a run learns the same task.

Data is numpy until `load` moves it to the device once, in the network's dtype.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import config, models
from .config import ConfigError

SPLIT_SEED = 0
HELD_OUT = 0.2  # digits: the fraction of each class held out
TEACHER_SEED = 0
TEACHER_SIGMA_W2 = 2.0  # a chaotic teacher: a rough function that a linear model cannot fit
TEACHER_KEEP = 0.5  # the fraction of drawn inputs kept, those with the largest margin between the top two logits
DIGITS_MISSING = "the digits data needs `pip install initprobe[train]` (scikit-learn, which ships them)"


@dataclass
class Data:
    """A data set on the device: inputs in the network's dtype, labels as int64."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    input_q: float  # E[x^2] of the training inputs: mean-field theory's q^0
    input_corr: float  # mean cosine similarity of two different training inputs: theory's c^0
    chance: float  # the held-out share of its most common class: the accuracy of a network that learned nothing

    def describe(self) -> dict:
        return {"name": self.name, "classes": self.classes, "train_examples": len(self.y_train),
                "test_examples": len(self.y_test), "input_q": self.input_q, "input_corr": self.input_corr,
                "chance_accuracy": self.chance}


def load(cfg: config.TrainConfig, device) -> Data:
    """cfg.data as tensors on `device`, shaped for cfg.arch. ConfigError if the digits' extra is not installed."""
    if cfg.data == "digits":
        x_train, y_train, x_test, y_test = digits()
    else:
        x_train, y_train, x_test, y_test = teacher(**config.teacher(cfg))
    q, corr = input_moments(x_train)
    classes = int(max(y_train.max(), y_test.max())) + 1
    chance = float(np.bincount(y_test, minlength=classes).max() / len(y_test))
    shape = config.DIGITS_SHAPE if cfg.arch == "cnn" else x_train.shape[1:]
    dtype = models.DTYPES[cfg.dtype]

    def inputs(x):
        return torch.as_tensor(x, device=device).to(dtype).reshape(-1, *shape)

    def labels(y):
        return torch.as_tensor(y, dtype=torch.int64, device=device)

    return Data(cfg.data, inputs(x_train), labels(y_train), inputs(x_test), labels(y_test), classes, q, corr, chance)


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the standardized digits as (n, 64) float32 rows, a fifth held out."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError(DIGITS_MISSING) from None
    bunch = load_digits()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    train, test = stratified_split(y, HELD_OUT, np.random.default_rng(SPLIT_SEED))
    x_train, x_test = standardize(x[train], x[test])
    return x_train.astype(np.float32), y[train], x_test.astype(np.float32), y[test]


def stratified_split(y: np.ndarray, held_out: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: round(held_out * n_c) of each class c's n_c examples, drawn at random, are held out."""
    test = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test.append(members[:round(held_out * len(members))])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(y)), test), test


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets with the training set's per-feature mean removed and divided by its std (1 where that is 0)."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def teacher(teacher_dim: int, teacher_depth: int, teacher_width: int, classes: int, teacher_examples: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): teacher_examples training examples and a quarter as many held out."""
    rng = np.random.default_rng(TEACHER_SEED)
    n = teacher_examples + max(teacher_examples // 4, 1)
    sizes = [teacher_dim] + [teacher_width] * teacher_depth
    weights = [rng.standard_normal((n_out, n_in)) * math.sqrt(TEACHER_SIGMA_W2 / n_in)
               for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    head = rng.standard_normal((classes, teacher_width)) / math.sqrt(teacher_width)
    x = rng.standard_normal((math.ceil(n / TEACHER_KEEP), teacher_dim))
    h = x
    for w in weights:
        h = np.tanh(h @ w.T)
    logits = h @ head.T
    top2 = np.sort(logits, axis=1)[:, -2:]
    kept = np.argsort(top2[:, 0] - top2[:, 1], kind="stable")[:n]  # largest gap first (gap = second - first <= 0)
    kept = rng.permutation(kept)
    x, y = x[kept].astype(np.float32), logits[kept].argmax(axis=1).astype(np.int64)
    return x[:teacher_examples], y[:teacher_examples], x[teacher_examples:], y[teacher_examples:]


def input_moments(x: np.ndarray) -> tuple[float, float]:
    """(E[x^2] over every element, mean cosine similarity over pairs of different rows): the q^0 and c^0 of
    mean-field theory. The pairs' mean is (|sum of unit rows|^2 - n) / (n (n - 1)), without forming the pairs."""
    rows = x.reshape(len(x), -1).astype(np.float64)
    n = len(rows)
    units = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    total = units.sum(axis=0)
    corr = (total @ total - n) / (n * (n - 1)) if n > 1 else math.nan
    return float(np.mean(rows**2)), float(corr)
