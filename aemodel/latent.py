"""The latent term's density: a Gaussian mixture fitted to the training rows' codes.

``anomaly_score`` adds ``w * latent_distance`` to ``recon_error`` (``aemodel.losses``).
``latent_distance`` is the code's negative log-density under a mixture of ``K`` Gaussians
fitted to (a sample of) the training codes, scaled like a squared Mahalanobis distance per
dimension (``--latent-components``, default 1: one Gaussian, fitted exactly from every
worker's summed moments):

    latent_distance(z) = (-2 log sum_k exp(c_k - |(z - mu_k) W_k|^2 / 2) - offset) / d

with ``c_k = log pi_k + log det W_k`` (``W_k`` the Cholesky factor of component k's
precision) and ``offset`` chosen so that the fitted codes average exactly 1.0. With one
component it is the squared Mahalanobis distance divided by ``d``. With more allowed, ``K``
in {1, 2, 4, 8} is chosen by BIC on the codes (no labels): codes that fall into clusters
(digits, categories) get a component each, so a row between clusters is unusual even
when it sits near the codes' overall mean, where one Gaussian calls it typical. On the
quality suite's development half that helped two tables and cost one, so it is not the
default (bench/RESULTS.md, "latent mixture").

Why not scikit-learn's ``GaussianMixture``: it would make scikit-learn and SciPy runtime
dependencies of a torch-only library for some 60 lines of EM; the bench suite, which has
scikit-learn, checked the choice of K against it.
"""

from __future__ import annotations

import numpy as np

COMPONENTS = (1, 2, 4, 8)
"""Mixture sizes BIC chooses from."""
MAX_CODES = 20_000
"""Codes the mixture is fitted on (a uniform sample of the training rows beyond this)."""


def _whiten(cov: np.ndarray, ridge: float | None = None) -> np.ndarray:
    """Cholesky factor ``W`` of the precision (``P = W W^T``) of ``cov`` plus ``ridge`` (default: a
    millionth of its mean variance)."""
    cov = (cov + cov.T) / 2
    if ridge is None:
        ridge = 1e-6 * max(float(np.trace(cov)) / len(cov), 1e-12)
    precision = np.linalg.inv(cov + ridge * np.eye(len(cov)))
    return np.linalg.cholesky((precision + precision.T) / 2)


def latent_gaussian(n: float, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening matrix of codes from their count, sum and sum of outer products.

    The whitening matrix ``W`` is the Cholesky factor of the precision, so the distance is
    a sum of squares and never negative in floating point; the tiny ridge keeps a collapsed
    latent dimension invertible without changing the distances of the others.
    """
    mean = np.asarray(total, dtype=np.float64) / n
    return mean, _whiten(np.asarray(outer, dtype=np.float64) / n - np.outer(mean, mean))


def _log_det(whitenings: np.ndarray) -> np.ndarray:
    """``log det W`` of whitening matrices [..., d, d] (triangular: the sum of the log diagonal)."""
    return np.log(np.abs(np.diagonal(whitenings, axis1=-2, axis2=-1))).sum(-1)


def _stored(log_coef: np.ndarray, means: np.ndarray, whitenings: np.ndarray, offset: float, rows: int,
            bic: dict) -> dict:
    """The form ``reference["latent"]`` holds; one component is also stored as format 2 stored
    its Gaussian (``mean`` / ``whitening``), for its readers (``aemodel.artifact.format_version``)."""
    stored = {"components": len(log_coef), "log_coef": np.asarray(log_coef).tolist(), "means": means.tolist(),
              "whitenings": whitenings.tolist(), "offset": float(offset), "rows": int(rows), "bic": bic}
    if len(log_coef) == 1:
        stored.update(mean=means[0].tolist(), whitening=whitenings[0].tolist())
    return stored


def gaussian_from_moments(n: float, total: np.ndarray, outer: np.ndarray) -> dict:
    """One Gaussian, exactly, from the codes' count, sum and sum of outer products (mergeable
    across workers), in ``fit_mixture``'s stored form: the distance is the squared
    Mahalanobis distance per dimension, averaging 1.0 over the codes (up to the ridge)."""
    mean, whitening = latent_gaussian(n, total, outer)
    log_det = float(_log_det(whitening))
    return _stored(np.array([log_det]), mean[None], whitening[None], -2 * log_det, int(n), {})


def _log_terms(x: np.ndarray, log_coef: np.ndarray, means: np.ndarray, whitenings: np.ndarray) -> np.ndarray:
    """[n, K] ``c_k - |(x - mu_k) W_k|^2 / 2`` for every row and component."""
    y = np.einsum("nkd,kde->nke", x[:, None, :] - means[None], whitenings)
    return log_coef[None] - 0.5 * (y ** 2).sum(-1)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    return top + np.log(np.exp(a - top[:, None]).sum(axis=1))


def _kmeans_labels(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 10) -> np.ndarray:
    """k-means++ seeding and a few Lloyd steps: the starting responsibilities of EM."""
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centers], axis=0)
        centers.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
    centers = np.array(centers)
    for _ in range(iters):
        labels = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)
        centers = np.array([x[labels == j].mean(0) if np.any(labels == j) else centers[j] for j in range(k)])
    return ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(1)


def _em(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 200,
        tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EM for a full-covariance mixture: (log_coef, means, whitenings, per-row log-density up to a constant)."""
    n, d = x.shape
    resp = np.eye(k)[_kmeans_labels(x, k, rng)] if k > 1 else np.ones((n, 1))
    # A component may not shrink onto a few codes (its density, and the BIC, would run off
    # to infinity): its covariance keeps a floor of 1e-3 of the codes' mean variance.
    ridge = 1e-3 * max(float(x.var(axis=0).mean()), 1e-12) if k > 1 else None
    previous = -np.inf
    for _ in range(iters):
        nk = resp.sum(0) + 1e-10
        means = resp.T @ x / nk[:, None]
        whitenings = np.array([_whiten(((x - means[j]) * resp[:, j:j + 1]).T @ (x - means[j]) / nk[j], ridge)
                               for j in range(k)])
        log_coef = np.log(nk / n) + _log_det(whitenings)
        terms = _log_terms(x, log_coef, means, whitenings)
        log_density = _logsumexp(terms)
        resp = np.exp(terms - log_density[:, None])
        mean_ll = float(log_density.mean())
        if k == 1 or mean_ll - previous <= tol * max(abs(mean_ll), 1.0):
            break
        previous = mean_ll
    return log_coef, means, whitenings, log_density


def fit_mixture(codes: np.ndarray, seed: int, components: tuple[int, ...] = COMPONENTS) -> dict:
    """The latent term's mixture for ``codes`` [n, d]: K by BIC, stored as ``reference["latent"]`` holds it.

    A size is tried only with at least two codes per free parameter. Returns ``components``,
    ``log_coef`` [K], ``means`` [K, d], ``whitenings`` [K, d, d], ``offset``, ``rows`` (codes
    fitted) and ``bic`` (per size tried).
    """
    x = np.asarray(codes, dtype=np.float64)
    n, d = x.shape
    rng = np.random.default_rng(seed)
    fits, bic = {}, {}
    for k in components:
        params = k * (d + d * (d + 1) / 2) + k - 1
        if k > 1 and params > n / 2:
            continue
        fits[k] = _em(x, k, rng)
        bic[k] = float(-2 * fits[k][3].sum() + params * np.log(n))
    best = min(bic, key=bic.get)
    log_coef, means, whitenings, log_density = fits[best]
    return _stored(log_coef, means, whitenings, (-2 * log_density).mean() - d, n,
                   {str(k): v for k, v in bic.items()})


def stored_mixture(latent: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(log_coef, means, whitenings, offset) of a stored latent term, either form.

    Artefacts written before mixtures store one Gaussian (``mean``, ``whitening``) whose
    distance is the squared Mahalanobis distance per dimension: one component with
    ``c = log det W`` and ``offset = -2 log det W`` gives exactly that.
    """
    if "means" in latent:
        return (np.asarray(latent["log_coef"], dtype=np.float64), np.asarray(latent["means"], dtype=np.float64),
                np.asarray(latent["whitenings"], dtype=np.float64), float(latent["offset"]))
    w = np.asarray(latent["whitening"], dtype=np.float64)
    log_det = float(_log_det(w))
    return np.array([log_det]), np.asarray(latent["mean"], dtype=np.float64)[None], w[None], -2 * log_det


def mixture_distance(codes: np.ndarray, latent: dict) -> np.ndarray:
    """``latent_distance`` in float64 numpy (the reference for the torch version in ``aemodel.losses``)."""
    log_coef, means, whitenings, offset = stored_mixture(latent)
    x = np.asarray(codes, dtype=np.float64)
    return (-2 * _logsumexp(_log_terms(x, log_coef, means, whitenings)) - offset) / x.shape[1]
