"""How easily a protection is seen: a simple classifier separating protected from original traces.

The distiller's cheapest detector: character 2-5-gram TF-IDF features and logistic regression
(scikit-learn), cross-validated with the two versions of one problem always in the same fold (so the
classifier never sees the other half of a pair), AUC pooled over folds with a bootstrap interval over
problems. AUC 0.5: indistinguishable; 1.0: every protected trace is recognised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from tracemark.foundation.errors import InvalidInput

__all__ = ["detectability"]


def detectability(
    clean: Sequence[str],
    channel: Sequence[str],
    *,
    folds: int = 5,
    bootstrap: int = 1000,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> dict:
    """Cross-validated AUC of char 2-5-gram TF-IDF + logistic regression separating ``channel`` from
    ``clean`` texts; ``clean[i]`` and ``channel[i]`` come from problem ``i`` and share a fold."""
    n = len(clean)
    if n != len(channel):
        raise InvalidInput("detectability needs one clean and one channel text per problem")
    if n < folds:
        raise InvalidInput(f"detectability needs at least {folds} problems, got {n}")
    texts = [t or " " for t in [*clean, *channel]]
    labels = np.array([0] * n + [1] * n)
    groups = np.array(list(groups if groups is not None else range(n)) * 2)
    scores = np.zeros(2 * n)
    fold_auc = []
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(texts, labels, groups):
        clf = make_pipeline(
            TfidfVectorizer(analyzer="char", ngram_range=(2, 5), sublinear_tf=True),
            LogisticRegression(C=1.0, max_iter=2000),
        )
        clf.fit([texts[i] for i in train], labels[train])
        scores[test] = clf.predict_proba([texts[i] for i in test])[:, 1]
        fold_auc.append(float(roc_auc_score(labels[test], scores[test])))
    pooled = float(roc_auc_score(labels, scores))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(bootstrap):
        pick = rng.integers(0, n, n)
        idx = np.concatenate([pick, pick + n])
        boots.append(roc_auc_score(labels[idx], scores[idx]))
    low, high = np.quantile(boots, [0.025, 0.975]).tolist() if boots else [pooled, pooled]
    return {
        "n_problems": n,
        "folds": folds,
        "fold_auc": fold_auc,
        "fold_auc_mean": float(np.mean(fold_auc)),
        "fold_auc_sd": float(np.std(fold_auc, ddof=1)),
        "pooled_auc": pooled,
        "pooled_auc_bootstrap95": [float(low), float(high)],
        "identical_pairs": sum(a == b for a, b in zip(clean, channel)),
    }
