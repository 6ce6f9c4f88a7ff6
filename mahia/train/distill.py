"""Distillation targets: a teacher's logits and features for every training row, computed once per data set and
teacher and cached as a safetensors file, so a training step only looks rows up.

Teachers (`--teacher`):
- "tfidf": the baseline on the full review (TF-IDF 1-2-grams + tabular features, logistic regression; its C chosen
  by validation ROC AUC as mahia.train.baseline does), cross-fitted: each training row's logit comes from the
  classifier fitted on the other TFIDF_FOLDS - 1 folds (the unsupervised vocabulary and idf are fitted once). A
  logistic regression fitted on all training rows nearly memorises them (in-sample ROC AUC 0.9986 against 0.953
  out of fold, both recorded in metrics.json "teacher"), so its logits on those rows would teach little more than
  the labels. Its features are the rows' TF-IDF vectors reduced to TFIDF_COMPONENTS dimensions by truncated SVD
  (latent semantic analysis; unsupervised, fitted on the training texts).
- a MAHIA-X checkpoint: its eval-mode logits and pooled features (the head's input) at the training text budget.

The cache file is `<data cache>/teachers/teacher-<kind>-<key>.safetensors`, the key a sha256 over the teacher's
identity (kind and settings, or the checkpoint's sha256), the training rows' content hash and the text budget.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from mahia.data import ReviewsDataset, iter_batches, length_sorted_order
from mahia.data.cache import data_dir
from mahia.evaluate.metrics import classification_metrics
from mahia.model import CheckpointError, MahiaX, load_checkpoint
from mahia.model.checkpoint import save_safetensors_atomically
from mahia.train.baseline import C_GRID, TfidfLogisticBaseline, logistic_regression

TFIDF_TEACHER = "tfidf"
TFIDF_FOLDS = 5
TFIDF_COMPONENTS = 64
# Probabilities are clipped to [EPS, 1 - EPS] before their logit is taken (a row predicted with certainty).
EPS = 1e-6
CACHE_VERSION = 2  # part of the key: a change to how targets are computed makes new files


@dataclass(frozen=True)
class TeacherTargets:
    """A teacher's outputs on the training split, in the split's row order."""

    logits: Tensor  # float32 [N, num_classes]
    features: Tensor  # float32 [N, k]
    row_ids: np.ndarray  # int64 [N], the rows these belong to
    info: dict[str, object]  # what the teacher is and how good (metrics.json "teacher")

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
        """(logits, features) of the training rows at positions `rows`."""
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        return self.logits[index].to(device), self.features[index].to(device)


def teacher_cache_dir() -> Path:
    """Where cached teacher targets live: the data cache's teachers/ folder."""
    return data_dir() / "teachers"


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _binary_logits(prob: np.ndarray) -> np.ndarray:
    """Two-class logits [-z/2, z/2] with z = log(p / (1 - p)): the same softmax as p."""
    p = np.clip(prob, EPS, 1 - EPS)
    z = np.log(p) - np.log1p(-p)
    return np.stack([-z / 2, z / 2], axis=1)


def tfidf_targets(train: ReviewsDataset, val: ReviewsDataset, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Cross-fitted logits, LSA features and the teacher's figures of the full-text TF-IDF baseline.

    The vocabulary, idf and encoders are fitted once on the training texts (no labels involved); the classifier's
    C is chosen on the validation split among C_GRID, then refitted per fold.
    """
    from sklearn.decomposition import TruncatedSVD

    encoder = TfidfLogisticBaseline(seed=seed)
    x_train, x_val = encoder.features(train, fit=True), encoder.features(val, fit=False)
    best: tuple[float, float, object] | None = None
    for c in C_GRID:
        classifier = logistic_regression(c, seed).fit(x_train, train.labels)
        auc = float(classification_metrics(val.labels, classifier.predict_proba(x_val)[:, 1])["roc_auc"])
        if best is None or auc > best[0]:
            best = (auc, c, classifier)
    assert best is not None
    val_auc, c, full = best
    folds = np.random.default_rng(seed).permutation(len(train)) % TFIDF_FOLDS
    prob = np.zeros(len(train))
    for fold in range(TFIDF_FOLDS):
        held, rest = np.flatnonzero(folds == fold), np.flatnonzero(folds != fold)
        classifier = logistic_regression(c, seed).fit(x_train[rest], train.labels[rest])
        prob[held] = classifier.predict_proba(x_train[held])[:, 1]
    svd = TruncatedSVD(TFIDF_COMPONENTS, random_state=seed)
    features = svd.fit_transform(encoder.vectorizer.transform(list(train.texts)))
    in_sample_auc = float(classification_metrics(train.labels, full.predict_proba(x_train)[:, 1])["roc_auc"])
    info = {"kind": TFIDF_TEACHER, "C": c, "folds": TFIDF_FOLDS, "svd_components": TFIDF_COMPONENTS,
            "svd_explained_variance": float(svd.explained_variance_ratio_.sum()), "val_roc_auc": val_auc,
            "train_out_of_fold": classification_metrics(train.labels, prob),
            "train_in_sample_roc_auc": in_sample_auc}
    return _binary_logits(prob), features, info


@torch.no_grad()
def checkpoint_targets(teacher: MahiaX, train: ReviewsDataset, max_len: int,
                       device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """A MAHIA-X teacher's eval-mode logits and pooled features (its head's input) on every training row."""
    teacher.eval().to(device)
    logits = np.zeros((len(train), teacher.config.num_classes), dtype=np.float32)
    features = np.zeros((len(train), teacher.config.d_model), dtype=np.float32)
    captured: list[Tensor] = []
    handle = teacher.head.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    try:
        for batch in iter_batches(train, 64, max_len, teacher.config.vocab_size, length_sorted_order(train, max_len)):
            captured.clear()
            out = teacher(**{k: v.to(device) for k, v in batch.inputs.items()})
            logits[batch.rows] = out.float().cpu().numpy()
            features[batch.rows] = captured[0].float().cpu().numpy()
    finally:
        handle.remove()
    return logits, features


def _load_checkpoint_teacher(path: str, num_classes: int, max_len: int) -> MahiaX:
    teacher, _ = load_checkpoint(path)
    if teacher.config.num_classes != num_classes:
        raise CheckpointError(f"teacher {path} has {teacher.config.num_classes} classes, the student {num_classes}")
    if teacher.config.max_seq_len < max_len:
        raise CheckpointError(f"teacher {path} takes at most {teacher.config.max_seq_len} tokens, "
                              f"training feeds {max_len}: lower max_text_tokens")
    return teacher


def _read_cache(path: Path, train: ReviewsDataset) -> TeacherTargets | None:
    """The cached targets, or None when the file is unreadable or belongs to other rows (then they are recomputed)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})["info"])
            tensors = {k: f.get_tensor(k) for k in ("logits", "features", "row_ids")}
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
    row_ids = tensors["row_ids"].numpy()
    if not np.array_equal(row_ids, train.row_ids):
        return None
    return TeacherTargets(tensors["logits"], tensors["features"], row_ids, info)


def load_teacher_targets(teacher: str | None, train: ReviewsDataset, val: ReviewsDataset, max_len: int,
                         num_classes: int, seed: int, device: torch.device,
                         log=print) -> TeacherTargets | None:
    """The teacher's targets for `train`: from the cache when present, else computed once and cached. `teacher` is
    "tfidf", a checkpoint path, or None (no distillation)."""
    if teacher is None:
        return None
    if teacher == TFIDF_TEACHER:
        identity = {"kind": TFIDF_TEACHER, "folds": TFIDF_FOLDS, "components": TFIDF_COMPONENTS,
                    "c_grid": list(C_GRID), "seed": seed, "val": val.content_hash()}
    else:
        model = _load_checkpoint_teacher(teacher, num_classes, max_len)
        identity = {"kind": "checkpoint", "sha256": _sha256_file(Path(teacher)), "max_len": max_len}
    identity |= {"version": CACHE_VERSION, "train": train.content_hash()}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    path = teacher_cache_dir() / f"teacher-{identity['kind']}-{key[:16]}.safetensors"
    if path.is_file():
        cached = _read_cache(path, train)
        if cached is not None:
            log(f"teacher targets: {path} (cached)")
            return cached
    log(f"teacher targets: computing {identity['kind']} teacher outputs on {len(train)} training rows (once)")
    if teacher == TFIDF_TEACHER:
        logits, features, info = tfidf_targets(train, val, seed)
    else:
        logits, features = checkpoint_targets(model, train, max_len, device)
        info = {"kind": "checkpoint", "path": teacher, "sha256": identity["sha256"], "config": model.config.name}
    info = {**info, "cache_file": path.name}
    targets = TeacherTargets(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)),
                             torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
                             train.row_ids.copy(), info)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomically({"logits": targets.logits, "features": targets.features,
                                 "row_ids": torch.from_numpy(targets.row_ids)}, path, {"info": json.dumps(info)})
    log(f"teacher targets: cached in {path}")
    return targets
