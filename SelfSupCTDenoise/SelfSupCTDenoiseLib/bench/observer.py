"""Channelized Hotelling observer (CHO) with Laguerre-Gauss channels: detectability of a known signal.

Signal-known-exactly task: a ROI centred on a known position holds the signal or not. The CHO
reduces each ROI g to channel outputs v = U^T g and applies the Hotelling (prewhitening) template
in channel space (Barrett & Myers, *Foundations of Image Science*, 2004, ch. 13-14):

    d'^2 = dv^T K^-1 dv,   dv = <v | present> - <v | absent>,   K = (K_present + K_absent) / 2

and AUC = Phi(d' / sqrt(2)) for Gaussian channel outputs. With a fixed background per lesion position
(the same slice with and without the lesion, independent noise in every trial), class means are
compared and the covariance is estimated within positions, so only the noise limits detection
(signal and background known exactly, as in phantom studies). Laguerre-Gauss (LG) channels suit
rotationally symmetric signals in roughly isotropic backgrounds (Barrett et al., PNAS 1993; Gallas &
Barrett, JOSA A 2003); their width is chosen per lesion size (`channel_width_mm`). With sample
estimates of dv and K the plug-in d'^2 is biased upwards; `cho_dprime` removes that bias with the
expectation of the plug-in estimator under Gaussian outputs (as in Wunderlich et al., IEEE TMI 2015).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np

#: LG channels per observer (5-10 are usual; 6 keep the 6 x 6 covariance well estimated from about
#: a hundred ROIs per class).
N_CHANNELS = 6
#: LG width over the disc diameter: the first channel exp(-pi r^2 / a^2) then has about the disc's
#: extent; with 6 channels the CHO reaches >= 90 % of the ideal observer's d'^2 for a disc in white
#: noise (Testing/test_observer.py).
WIDTH_PER_DIAMETER = 1.0


def channel_width_mm(diameter_mm: float) -> float:
    """LG channel width a (mm) for a disc of this diameter."""
    return WIDTH_PER_DIAMETER * float(diameter_mm)


def roi_half_width_mm(diameter_mm: float, n_channels: int = N_CHANNELS) -> float:
    """Half side of the ROI that holds the LG channels of this disc: the highest-order channel
    reaches about a * sqrt(n / pi); one disc radius more keeps its tail inside."""
    a = channel_width_mm(diameter_mm)
    return a * math.sqrt(max(n_channels, 1) / math.pi) + 0.5 * diameter_mm


def laguerre_gauss_channels(shape: Sequence[int], spacing_yx: Sequence[float], width_mm: float,
                            n_channels: int = N_CHANNELS, centre_yx: Optional[Sequence[float]] = None) -> np.ndarray:
    """(n_channels, rows * cols) LG channels u_n(r) = sqrt(2)/a exp(-pi r^2/a^2) L_n(2 pi r^2/a^2),
    r in mm from `centre_yx` (pixel units; default: the ROI centre), sampled at pixel centres."""
    rows, cols = int(shape[0]), int(shape[1])
    cy, cx = ((rows - 1) / 2.0, (cols - 1) / 2.0) if centre_yx is None else centre_yx
    yy, xx = np.mgrid[:rows, :cols].astype(np.float64)
    r2 = ((yy - cy) * spacing_yx[0]) ** 2 + ((xx - cx) * spacing_yx[1]) ** 2
    t = 2.0 * math.pi * r2 / width_mm ** 2
    envelope = math.sqrt(2.0) / width_mm * np.exp(-t / 2.0)
    # Laguerre polynomials by their three-term recurrence: L_{n+1} = ((2n + 1 - t) L_n - n L_{n-1}) / (n + 1)
    previous, current = np.zeros_like(t), np.ones_like(t)
    channels = []
    for n in range(n_channels):
        channels.append((envelope * current).ravel())
        previous, current = current, ((2 * n + 1 - t) * current - n * previous) / (n + 1)
    return np.stack(channels)


def auc_from_dprime(dprime: float) -> float:
    """AUC = Phi(d' / sqrt(2)) (equal-variance Gaussian decision variable)."""
    return 0.5 * (1.0 + math.erf(dprime / 2.0))


def _group_sums(v: np.ndarray, groups: np.ndarray, n_groups: int):
    """Per group: trial count, sum of outputs and within-group scatter matrix."""
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    sums = np.zeros((n_groups, v.shape[1]))
    np.add.at(sums, groups, v)
    means = sums / np.maximum(counts, 1)[:, None]
    centred = v - means[groups]
    scatter = np.einsum("ti,tj->tij", centred, centred)
    group_scatter = np.zeros((n_groups, v.shape[1], v.shape[1]))
    np.add.at(group_scatter, groups, scatter)
    return counts, means, group_scatter


def _dprime_squared(stats1, stats0, pick: np.ndarray) -> float:
    """Bias-corrected d'^2 from the per-group statistics of the groups in `pick` (with repeats).

    dv = mean over groups of (present mean - absent mean): a background shared by both classes of a
    group cancels. K = within-group covariance pooled over groups and classes."""
    (c1, m1, s1), (c0, m0, s0) = stats1, stats0
    p = m1.shape[1]
    delta = (m1[pick] - m0[pick]).mean(0)
    dof = float((c1[pick] - 1).sum() + (c0[pick] - 1).sum())
    pooled = (s1[pick].sum(0) + s0[pick].sum(0)) / dof
    try:
        plug_in = float(delta @ np.linalg.solve(pooled, delta))
    except np.linalg.LinAlgError:  # e.g. a bootstrap resample of a few positions
        return float("nan")
    # Gaussian outputs: E[plug-in] = dof / (dof - p - 1) * (d'^2 + p * spread), spread = Var(dv) / K
    spread = float((1.0 / c1[pick] + 1.0 / c0[pick]).sum()) / len(pick) ** 2
    return (dof - p - 1) / dof * plug_in - p * spread


def group_statistics(v1: np.ndarray, v0: np.ndarray, groups_present: Optional[np.ndarray] = None,
                     groups_absent: Optional[np.ndarray] = None):
    """Per-group sufficient statistics of channel outputs with and without the signal (see
    `hotelling_dprime`), for `dprime_of_groups`; without groups, one group holds both classes."""
    v1, v0 = np.asarray(v1, np.float64), np.asarray(v0, np.float64)
    if groups_present is None:
        stats1, stats0 = _group_sums(v1, np.zeros(len(v1), int), 1), _group_sums(v0, np.zeros(len(v0), int), 1)
    else:
        g1, g0 = np.asarray(groups_present, int), np.asarray(groups_absent, int)
        n_groups = int(max(g1.max(), g0.max())) + 1
        stats1, stats0 = _group_sums(v1, g1, n_groups), _group_sums(v0, g0, n_groups)
        if (stats1[0] < 2).any() or (stats0[0] < 2).any():
            raise ValueError("every group needs at least 2 trials of each class")
    dof = (stats1[0] - 1).sum() + (stats0[0] - 1).sum()
    if dof <= v1.shape[1] + 1:
        raise ValueError(f"{int(dof)} degrees of freedom are too few for {v1.shape[1]} channels")
    return stats1, stats0


def dprime_of_groups(stats, pick: Optional[np.ndarray] = None) -> float:
    """d' from `group_statistics` over the groups `pick` (with repeats; default all); NaN when the
    covariance of that pick is singular. Paired comparisons resample the same groups for each method."""
    pick = np.arange(len(stats[0][0])) if pick is None else pick
    d2 = _dprime_squared(stats[0], stats[1], pick)
    return math.sqrt(max(d2, 0.0)) if np.isfinite(d2) else float("nan")


def channel_outputs(rois: np.ndarray, channels: np.ndarray, spacing_yx: Sequence[float]) -> np.ndarray:
    """(trials, channels) outputs v = sum over pixels of u_n g x pixel area: the integral of u_n g,
    so that outputs from images of different pixel sizes can be pooled."""
    rois = np.asarray(rois, np.float64).reshape(len(rois), -1)
    u = np.asarray(channels, np.float64)
    if rois.shape[1] != u.shape[1]:
        raise ValueError(f"ROIs of {rois.shape[1]} pixels, channels of {u.shape[1]}")
    return rois @ u.T * float(spacing_yx[0]) * float(spacing_yx[1])


def cho_dprime(present: np.ndarray, absent: np.ndarray, channels: np.ndarray, spacing_yx: Sequence[float] = (1.0, 1.0),
               groups_present: Optional[np.ndarray] = None, groups_absent: Optional[np.ndarray] = None,
               n_bootstrap: int = 0, seed: int = 0) -> Dict[str, float]:
    """d' (and AUC) of the CHO on ROIs (trials, rows, cols) with and without the signal; see
    `hotelling_dprime` for groups and the bootstrap."""
    return hotelling_dprime(channel_outputs(present, channels, spacing_yx), channel_outputs(absent, channels, spacing_yx),
                            groups_present, groups_absent, n_bootstrap, seed)


def hotelling_dprime(v1: np.ndarray, v0: np.ndarray, groups_present: Optional[np.ndarray] = None,
                     groups_absent: Optional[np.ndarray] = None, n_bootstrap: int = 0, seed: int = 0) -> Dict[str, float]:
    """d' (and AUC) of the Hotelling observer on channel outputs (trials, channels) with and without
    the signal.

    Without groups the trials are independent draws (background and noise). With groups (an integer
    per trial, e.g. the lesion position), every group holds both classes on one fixed background
    (background known exactly): class means are compared within groups and the covariance is the
    within-group one, so only the noise limits detection. `n_bootstrap` > 0 adds the standard error
    and a 95 % interval of d' from resampling groups (or trials, without groups) with replacement.
    """
    v1, v0 = np.asarray(v1, np.float64), np.asarray(v0, np.float64)
    stats = group_statistics(v1, v0, groups_present, groups_absent)
    n_groups = len(stats[0][0])
    dprime = dprime_of_groups(stats)
    if not np.isfinite(dprime):
        raise ValueError("the channel outputs' covariance is singular (constant ROIs?)")
    out = {"dprime": dprime, "auc": auc_from_dprime(dprime), "n_present": len(v1), "n_absent": len(v0),
           "n_groups": n_groups, "n_channels": v1.shape[1]}
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        boot = np.empty(n_bootstrap)
        for b in range(n_bootstrap):
            if n_groups > 1:
                boot[b] = dprime_of_groups(stats, rng.integers(0, n_groups, n_groups))
            else:
                i1, i0 = rng.integers(0, len(v1), len(v1)), rng.integers(0, len(v0), len(v0))
                boot[b] = dprime_of_groups(group_statistics(v1[i1], v0[i0]))
        boot = boot[np.isfinite(boot)]  # resamples too narrow for the covariance are left out
        out["dprime_se"] = float(boot.std(ddof=1)) if boot.size > 1 else float("nan")
        out["dprime_ci95"] = ([float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
                              if boot.size > 1 else [float("nan")] * 2)
    return out
