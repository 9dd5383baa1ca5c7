"""Redrock-format PCA galaxy templates built from the same SSPs + emission lines as the mock.

Redrock's official templates are not on the package index, so we make them the way Redrock's own
galaxy templates are made: many model galaxies (SFH x dust x lines) in the rest frame, PCA, keep
the first n vectors. `redrock.templates.Template` takes them as arrays.

Coverage: a template must cover the observed range / (1 + z) at every z it scans. E-MILES starts
at 1680 A rest, so the basis covers 3600-9824 A only up to z = 1.14. Bluer rest wavelengths are
padded with zeros: at a trial z above 1.14 the model is 0 there, and the data pixels there are
masked in the mock (as missing data), so they add nothing to chi^2. At full scale the official
`redrock-templates` can be pointed to instead (RR_TEMPLATE_DIR).
"""

from __future__ import annotations

import numpy as np

from . import mock

C_KMS = mock.C_KMS


def model_galaxies(basis: mock.SSPBasis, n: int, rng, settings: mock.MockSettings) -> np.ndarray:
    """[n, n_rest] rest-frame model galaxies (r-arm smoothing, lines at 80 km/s), median 1."""
    p = mock.draw_params(rng, n, basis, settings, test=False)
    atten = 10 ** (-0.4 * p.av[:, None] * basis.k_lambda[None, :])
    spec = (p.weights @ basis.per_arm["r"].astype(float)) * atten
    ln = basis.ln_wave
    sig_ln = np.hypot(1.0 / (2.355 * np.mean(mock.ARMS["r"][2:])), 80.0 / C_KMS)
    lam = np.exp(ln)
    for k, rest in enumerate(mock.LINES.values()):
        cont = np.array([np.interp(np.log(rest), ln, s) for s in spec])
        sig = rest * sig_ln
        prof = np.exp(-0.5 * ((lam - rest) / sig) ** 2) / (np.sqrt(2 * np.pi) * sig)
        spec = spec + (p.line_ew[:, k] * cont)[:, None] * prof[None, :]
    return spec / np.median(spec, axis=1, keepdims=True)


def build_templates(basis: mock.SSPBasis, *, n_basis: int = 10, n_galaxies: int = 1000, seed: int = 0,
                    blue: float = 1300.0, settings: mock.MockSettings | None = None) -> dict:
    """PCA basis {wave [n_pix] rest A, flux [n_basis, n_pix], explained [n_basis], n_galaxies}.

    The wavelength axis is the basis's ln grid, extended with zeros down to `blue` (see module doc)."""
    rng = np.random.default_rng(seed)
    spec = model_galaxies(basis, n_galaxies, rng, settings or mock.MockSettings())
    _, s, vt = np.linalg.svd(spec, full_matrices=False)  # uncentred: vector 0 ~ the mean galaxy
    flux = vt[:n_basis] * np.sign(vt[:n_basis].sum(axis=1, keepdims=True))
    dln = basis.ln_wave[1] - basis.ln_wave[0]
    n_pad = int(np.ceil((basis.ln_wave[0] - np.log(blue)) / dln))
    ln = np.concatenate([basis.ln_wave[0] - dln * np.arange(n_pad, 0, -1), basis.ln_wave])
    flux = np.concatenate([np.zeros((n_basis, n_pad)), flux], axis=1)
    explained = s[:n_basis] ** 2 / np.sum(s ** 2)
    return {"wave": np.exp(ln), "flux": flux, "explained": explained, "n_galaxies": n_galaxies,
            "covered_from": float(np.exp(basis.ln_wave[0]))}
