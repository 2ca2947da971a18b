"""Agreement statistics shared by the bundles' evaluations.

Used for Agatston and volume agreement (orCaScore protocol, Wolterink et al. 2016; DenseRAUnet
Table 2; ICAC paper Fig. 2) and risk-category agreement.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["icc_absolute_agreement", "weighted_kappa"]


def icc_absolute_agreement(x, y: Sequence[float] | None = None) -> float:
    """Two-way random-effects, absolute-agreement, single-measure ICC: ICC(2,1) of Shrout and Fleiss
    (1979), ICC(A,1) of McGraw and Wong (1996), the statistic of the orCaScore evaluation::

        ICC = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)

    with MSR, MSC and MSE the subject, rater and residual mean squares of the two-way ANOVA.

    Args:
        x: an (n subjects, k >= 2 raters) array, or the first rater's n values when ``y`` is given.
        y: the second rater's n values (e.g. predicted against reference Agatston).

    Returns NaN when it is undefined (fewer than 2 subjects, or no variance at all).
    """
    data = np.asarray(x, dtype=np.float64) if y is None else np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    if data.ndim != 2 or data.shape[1] < 2:
        raise ValueError(f"ratings must be (n subjects, k >= 2 raters), got shape {data.shape}")
    n, k = data.shape
    if n < 2:
        return float("nan")
    grand = data.mean()
    ss_rows = k * np.sum((data.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((data.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((data - grand) ** 2) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    # no variance at all (every rating equal): undefined. Compared with the ratings' size, because rounding
    # leaves e.g. 1e-33 instead of 0 for seven ratings of 0.1, which would give 1.0000000000000002
    if np.sum((data - grand) ** 2) <= 1e-12 * max(float(np.sum(data**2)), np.finfo(float).tiny) or denom == 0:
        return float("nan")
    return float(min((msr - mse) / denom, 1.0))


def weighted_kappa(a: Sequence[int], b: Sequence[int], n_categories: int, weights: str = "linear") -> float:
    """Cohen's weighted kappa of two ordinal ratings in ``0 .. n_categories - 1`` (Cohen 1968)::

        kappa_w = 1 - sum(w_ij O_ij) / sum(w_ij E_ij),  w_ij = |i - j| / (K - 1)  (linear)

    with O the observed and E the chance-expected (outer product of the marginals) proportions.
    ``weights="quadratic"`` uses ``((i - j) / (K - 1))**2``. Returns 1.0 when both raters put every
    subject in one same category (perfect agreement, no disagreement possible), NaN for no subjects.
    """
    a = np.asarray(a, dtype=int)
    b = np.asarray(b, dtype=int)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"ratings must be two 1D sequences of equal length, got {a.shape} and {b.shape}")
    if a.size == 0:
        return float("nan")
    if min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= n_categories:
        raise ValueError(f"ratings must lie in 0..{n_categories - 1}")
    obs = np.zeros((n_categories, n_categories))
    np.add.at(obs, (a, b), 1.0)
    obs /= a.size
    exp = np.outer(obs.sum(axis=1), obs.sum(axis=0))
    i, j = np.indices((n_categories, n_categories))
    dist = np.abs(i - j) / max(n_categories - 1, 1)
    if weights == "quadratic":
        dist = dist**2
    elif weights != "linear":
        raise ValueError(f"weights must be 'linear' or 'quadratic', got {weights!r}")
    expected = float(np.sum(dist * exp))
    if expected == 0:
        return 1.0
    return float(1.0 - np.sum(dist * obs) / expected)
