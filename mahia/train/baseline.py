"""The baseline to beat: TF-IDF of the review text + tabular features -> logistic regression."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from mahia.data import ReviewsDataset
from mahia.data.tokenizer import truncate_words
from mahia.evaluate.metrics import classification_metrics
from mahia.model.config import REVIEWS_CATEGORICAL_CARDINALITIES

# Inverse regularisation strengths tried; the one with the best validation ROC AUC is kept.
C_GRID = (0.25, 1.0, 4.0, 16.0)


def truncate_texts(texts: tuple[str, ...], max_words: int | None) -> list[str]:
    """Texts cut to their first max_words tokens (what the model with that budget sees)."""
    if max_words is None:
        return list(texts)
    return [truncate_words(t, max_words) for t in texts]


def logistic_regression(c: float, seed: int) -> LogisticRegression:
    """The baseline's classifier at inverse regularisation strength c."""
    return LogisticRegression(C=c, max_iter=5000, random_state=seed)


class TfidfLogisticBaseline:
    """Word 1-2-gram TF-IDF (sublinear tf) + standardised numeric + one-hot categorical -> logistic regression."""

    def __init__(self, c: float = 1.0, max_words: int | None = None, seed: int = 0) -> None:
        self.c = c
        self.max_words = max_words
        self.seed = seed
        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, strip_accents="unicode")
        self.onehot = OneHotEncoder(categories=[list(range(c)) for c in REVIEWS_CATEGORICAL_CARDINALITIES],
                                    handle_unknown="ignore")
        self.classifier = logistic_regression(c, seed)

    def features(self, data: ReviewsDataset, fit: bool) -> sp.csr_matrix:
        """The rows' TF-IDF, numeric and one-hot features; `fit` fits the vocabulary and encoders first."""
        texts = truncate_texts(data.texts, self.max_words)
        text = self.vectorizer.fit_transform(texts) if fit else self.vectorizer.transform(texts)
        cats = self.onehot.fit_transform(data.categorical) if fit else self.onehot.transform(data.categorical)
        return sp.hstack([text, sp.csr_matrix(data.numeric.astype(np.float64)), cats]).tocsr()

    def fit(self, train: ReviewsDataset) -> TfidfLogisticBaseline:
        """Fit the vocabulary, encoders and classifier on the training split."""
        self.classifier.fit(self.features(train, fit=True), train.labels)
        return self

    def predict_proba(self, data: ReviewsDataset) -> np.ndarray:
        """P(recommended) for every row."""
        return self.classifier.predict_proba(self.features(data, fit=False))[:, 1]


def run_baseline(train: ReviewsDataset, val: ReviewsDataset, test: ReviewsDataset,
                 max_words: int | None = None, seed: int = 0) -> dict[str, object]:
    """Fit on train for each C in C_GRID, keep the best by validation ROC AUC, report val and test metrics."""
    best: tuple[float, TfidfLogisticBaseline] | None = None
    for c in C_GRID:
        model = TfidfLogisticBaseline(c, max_words, seed).fit(train)
        auc = classification_metrics(val.labels, model.predict_proba(val))["roc_auc"]
        if best is None or auc > best[0]:
            best = (auc, model)
    assert best is not None
    model = best[1]
    return {"C": model.c, "max_words": max_words,
            "val": classification_metrics(val.labels, model.predict_proba(val)),
            "test": classification_metrics(test.labels, model.predict_proba(test))}
