"""A learned blind baseline: TF-IDF + logistic regression from a question's words to its answer, trained on
other images' questions (issue 31 item 7), beside stats.py's hand-written text-only rule.

Where the rule of stats.py knows the program (what is counted, read, combined), this baseline knows only
the words: it is what a model that ignores the image can learn from the data's phrasing (for example "how
many dots" -> 3, "the sum" -> 6). Evaluation is grouped by image: the records of one image are all in the
same fold, so no question is scored by a classifier that saw another question of its image.

Features: lower-cased word unigrams and bigrams (numbers written in the question are words too), from the
training fold's questions, at most `max_features` of the most frequent ones seen in >= `min_df` questions;
sublinear tf (1 + log count) times smoothed idf (log((1 + n) / (1 + df)) + 1), each row L2-normalised.
Classifier: multinomial logistic regression over the training fold's answers with an L2 penalty (strength
`l2` per training question), fitted by full-batch gradient descent with Nesterov momentum for `iterations`
steps; an answer absent from the training fold is never predicted. Pure numpy; a dataset of ~6,000
records takes a few seconds.

    result = classifier_baseline(records)              # one variant's records (the caller filters)
    result["accuracy"], result["queries"], result["folds"]
"""
from __future__ import annotations

import collections
import hashlib
import math
import re
from typing import Any, Iterable, Mapping

import numpy as np

CLASSIFIER_RULE = ("TF-IDF (word 1-2-grams) + multinomial logistic regression from the question text to the answer, "
                   "trained on other images' questions (folds by image)")
_WORD = re.compile(r"[a-z]+|\d+")


def ngrams(text: str) -> list[str]:
    """The question's word unigrams and bigrams (lower case; digit runs are words)."""
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class TfidfVectorizer:
    """Fit on training texts, then map any texts to L2-normalised TF-IDF rows [n, features] (float32)."""

    def __init__(self, max_features: int = 4000, min_df: int = 2):
        self.max_features, self.min_df = max_features, min_df

    def fit(self, texts: list[str]) -> "TfidfVectorizer":
        df = collections.Counter(g for t in texts for g in set(ngrams(t)))
        kept = sorted((g for g, n in df.items() if n >= self.min_df), key=lambda g: (-df[g], g))[:self.max_features]
        self.index = {g: i for i, g in enumerate(kept)}
        n = len(texts)
        self.idf = np.asarray([math.log((1 + n) / (1 + df[g])) + 1 for g in kept], np.float32)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), len(self.index)), np.float32)
        for row, text in enumerate(texts):
            for g, c in collections.Counter(ngrams(text)).items():
                col = self.index.get(g)
                if col is not None:
                    x[row, col] = 1 + math.log(c)
        x *= self.idf
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms > 0, norms, 1)


def fit_logistic(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3, iterations: int = 300,
                 lr: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (weights [features, classes], bias [classes]) minimising the mean
    cross-entropy + l2/2 * |W|^2 by Nesterov-accelerated gradient descent (the loss is convex and smooth:
    rows are unit vectors, so the step `lr` is safe)."""
    n, d = x.shape
    onehot = np.eye(classes, dtype=np.float32)[y]
    w, b = np.zeros((d, classes), np.float32), np.log(onehot.mean(0) + 1e-6).astype(np.float32)
    vw, vb = w.copy(), b.copy()
    for k in range(iterations):
        z = x @ vw + vb
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / n
        gw, gb = x.T @ g + l2 * vw, g.sum(0)
        w_next, b_next = vw - lr * gw, vb - lr * gb
        momentum = k / (k + 3)
        vw, vb = w_next + momentum * (w_next - w), b_next + momentum * (b_next - b)
        w, b = w_next, b_next
    return w, b


def _fold(sha256: str, folds: int, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{sha256}".encode()).digest()[:8], "big") % folds


def classifier_baseline(records: Iterable[Mapping[str, Any]], folds: int = 5, seed: int = 0,
                        max_features: int = 4000, l2: float = 1e-3, iterations: int = 300) -> dict[str, Any]:
    """Accuracy of the TF-IDF + logistic-regression blind baseline on `records` (each with question, answer
    and image.sha256), every record scored by the classifier fitted on the folds that hold none of its
    image's records. Returns accuracy (None without records), queries, folds, the majority-answer accuracy
    under the same folds (most_common_cv) and the rule's description."""
    records = list(records)
    if not records:
        return {"accuracy": None, "most_common_cv": None, "queries": 0, "folds": folds, "rule": CLASSIFIER_RULE}
    fold = np.asarray([_fold(r["image"]["sha256"], folds, seed) for r in records])
    texts = [str(r["question"]) for r in records]
    answers = [str(r["answer"]) for r in records]
    hits = majority_hits = 0
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if not len(test) or not len(train):
            continue
        labels = sorted({answers[i] for i in train})
        code = {a: i for i, a in enumerate(labels)}
        vec = TfidfVectorizer(max_features=max_features).fit([texts[i] for i in train])
        y = np.asarray([code[answers[i]] for i in train])
        w, b = fit_logistic(vec.transform([texts[i] for i in train]), y, len(labels), l2=l2, iterations=iterations)
        guess = np.argmax(vec.transform([texts[i] for i in test]) @ w + b, axis=1)
        hits += sum(labels[g] == answers[i] for g, i in zip(guess, test))
        top = collections.Counter(answers[i] for i in train).most_common(1)[0][0]
        majority_hits += sum(answers[i] == top for i in test)
    return {"accuracy": round(hits / len(records), 4), "most_common_cv": round(majority_hits / len(records), 4),
            "queries": len(records), "folds": folds, "rule": CLASSIFIER_RULE}
