"""specfm.stars.xp: the gaiaxpy design matrix and the coefficient solver."""

import numpy as np
import pandas as pd
import pytest

from specfm.stars import xp
from specfm.stars.columns import N_XP

TOY = xp.XPDesign(np.array([1.0, 2.0, 3.0]), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))


def gaiaxpy_calibrate(coefficients):
    """Run the public gaiaxpy.calibrate on (n, 110) coefficients (identity correlations)."""
    import gaiaxpy

    n_corr = N_XP * (N_XP - 1) // 2
    rows = []
    for k, c in enumerate(coefficients):
        row = {"source_id": k + 1}
        for band, part in (("bp", c[:N_XP]), ("rp", c[N_XP:])):
            row |= {f"{band}_coefficients": np.asarray(part, float),
                    f"{band}_coefficient_errors": np.full(N_XP, 1.0),
                    f"{band}_coefficient_correlations": np.zeros(n_corr),
                    f"{band}_n_parameters": N_XP, f"{band}_standard_deviation": 1.0}
        rows.append(row)
    spectra, sampling = gaiaxpy.calibrate(pd.DataFrame(rows), save_file=False)
    return np.stack(spectra["flux"].to_numpy()).astype(float), np.asarray(sampling, float)


def well_determined(design, rng, n, threshold=1e-2):
    """Coefficient vectors that the sampled flux pins down: star-like smooth spectra (Planck
    curves, 3500-9000 K) projected on the singular vectors of the column-equilibrated design
    with s >= threshold * s_max, plus random components in that subspace.
    Returns (coefficients, s_min of the kept directions, column norms)."""
    norms = np.linalg.norm(design.matrix, axis=0)
    u, s, vt = np.linalg.svd(design.matrix / norms, full_matrices=False)
    keep = s >= threshold * s[0]
    lam = design.wavelength * 1e-9
    teff = rng.uniform(3500, 9000, size=(n, 1))
    planck = 1 / lam**5 / np.expm1(6.62607e-34 * 2.99792e8 / (lam * 1.380649e-23 * teff))
    planck /= planck.max(axis=1, keepdims=True)
    z = (planck @ u[:, keep] / s[keep]) @ vt[keep]
    z += 0.01 * np.linalg.norm(z, axis=1, keepdims=True) * rng.normal(size=(n, keep.sum())) @ vt[keep] / 10
    return z / norms, s[keep].min(), norms


def test_design_is_what_gaiaxpy_calibrate_uses():
    rng = np.random.default_rng(1)
    design = xp.gaiaxpy_design()
    assert design.matrix.shape == (343, 110)
    np.testing.assert_allclose(design.wavelength, np.arange(336.0, 1021.0, 2.0))
    coefficients = rng.normal(scale=[1e4] + [3e2] * 54 + [1e4] + [3e2] * 54, size=(3, 110))
    flux, sampling = gaiaxpy_calibrate(coefficients)
    np.testing.assert_allclose(sampling, design.wavelength)
    mine = xp.coefficients_to_flux(coefficients, design)
    np.testing.assert_allclose(mine, flux, rtol=0, atol=1e-12 * np.abs(flux).max())
    # BP and RP are blended only in the 636-642 nm overlap, through gaiaxpy's merge weights
    bp_only = design.matrix[:, N_XP:] == 0
    assert bp_only.all(axis=1)[design.wavelength < 636].all()
    assert (design.matrix[:, :N_XP] == 0).all(axis=1)[design.wavelength > 642].all()


def test_round_trip_through_gaiaxpy_recovers_coefficients_and_flux():
    """coefficients -> gaiaxpy.calibrate -> median-normalised float32 (the library's storage) ->
    fit_coefficients -> the same coefficients and the same flux.

    Tolerance (in column-equilibrated units z = c * |a_i|, where the ridge acts): the ridge
    shifts a component with singular value s >= s_min by at most tau^2 / s_min^2 of itself, and
    rounding error dy moves z by at most |dy| * max_s s / (s^2 + tau^2) = |dy| / (2 tau) (the
    ridge caps the amplification in the near-null directions; without it this is |dy| / 3e-7).
    We allow twice their sum.
    """
    rng = np.random.default_rng(2)
    design = xp.gaiaxpy_design()
    truth, s_min, norms = well_determined(design, rng, 4)
    flux, _ = gaiaxpy_calibrate(truth)
    medflux = np.median(flux, axis=1)
    stored = (flux / medflux[:, None]).astype(np.float32)
    fit = xp.fit_coefficients(stored, scale=medflux)

    z_true, z_fit = truth * norms, fit.coefficients * norms
    dy = np.linalg.norm(stored.astype(float) * medflux[:, None] - flux, axis=1)
    bound = xp.DEFAULT_RIDGE**2 / s_min**2 * np.linalg.norm(z_true, axis=1) + dy / (2 * xp.DEFAULT_RIDGE)
    err = np.linalg.norm(z_fit - z_true, axis=1)
    assert (err <= 2 * bound).all(), (err, bound)
    assert (err <= 1e-3 * np.linalg.norm(z_true, axis=1)).all()
    np.testing.assert_allclose(xp.coefficients_to_flux(fit.coefficients, design), flux,
                               rtol=0, atol=1e-6 * np.abs(flux).max())
    assert (fit.rms_rel < 1e-6).all()


def test_least_squares_by_hand():
    # consistent data: exact answer, zero residual
    fit = xp.fit_coefficients([1.0, 2.0, 3.0], design=TOY, ridge=0)
    np.testing.assert_allclose(fit.coefficients, [[1.0, 2.0]], atol=1e-12)
    assert fit.chi2[0] == pytest.approx(0, abs=1e-20)
    # inconsistent, equal weights: (A^T A)^-1 A^T y = [4/3, 7/3], residuals (-1, -1, 1)/3
    y = [1.0, 2.0, 4.0]
    fit = xp.fit_coefficients(y, design=TOY, ridge=0)
    np.testing.assert_allclose(fit.coefficients, [[4 / 3, 7 / 3]], atol=1e-12)
    assert fit.chi2[0] == pytest.approx(1 / 3)
    assert fit.rms_rel[0] == pytest.approx(np.sqrt((1 / 9) / 7))
    # third sample error 0.5 (weight 4): A^T W A = [[5, 4], [4, 5]], A^T W y = [17, 18] -> [13, 22]/9
    # (groups only change how A^T W A is computed, never the answer); scale multiplies through
    grouped = xp.XPDesign(TOY.wavelength, TOY.matrix, ((0,), (1,)))
    for design in (TOY, grouped):
        fit = xp.fit_coefficients(y, [1.0, 1.0, 0.5], scale=2.0, design=design, ridge=0)
        np.testing.assert_allclose(fit.coefficients, [[26 / 9, 44 / 9]], atol=1e-12)


def test_ridge_damps_only_what_the_flux_cannot_see():
    """A flux perturbation of 1e-7 (relative, float32-rounding size) along the weakest direction
    of the design moves the unregularised coefficients by orders of magnitude more than with the
    default ridge, which still recovers the strong direction."""
    design = xp.gaiaxpy_design()
    norms = np.linalg.norm(design.matrix, axis=0)
    u, s, vt = np.linalg.svd(design.matrix / norms, full_matrices=False)
    base = design.matrix @ (10 * vt[0] / norms)
    bump = 1e-7 * np.linalg.norm(base) * u[:, -1]
    fits = {r: xp.fit_coefficients(np.stack([base, base + bump]), design=design, ridge=r).coefficients
            for r in (0.0, xp.DEFAULT_RIDGE)}
    moved = {r: np.linalg.norm((c[1] - c[0]) * norms) for r, c in fits.items()}
    # theory: 1/s_min without ridge vs s_min/tau^2 with it, a ratio (tau/s_min)^2 ~ 1e3 here
    assert moved[0.0] > 100 * moved[xp.DEFAULT_RIDGE]
    # ... while the signal itself, along the strongest direction, comes back intact
    np.testing.assert_allclose(fits[xp.DEFAULT_RIDGE][0] * norms, 10 * vt[0], atol=1e-5 * 10)


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"\(n_stars, 343\)"):
        xp.fit_coefficients(np.ones((2, 300)))
    flux = np.ones((3, 3))
    flux[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 of 3 spectra.*row 1.*non-finite flux"):
        xp.fit_coefficients(flux, design=TOY)
    with pytest.raises(ValueError, match="flux_error"):
        xp.fit_coefficients(np.ones((3, 3)), [[1, 1, 0]] * 3, design=TOY)
    with pytest.raises(ValueError, match="scale"):
        xp.fit_coefficients(np.ones((1, 3)), scale=[-1.0], design=TOY)
    with pytest.raises(ValueError, match="110"):
        xp.coefficients_to_flux(np.ones((1, 109)))
    # on_bad="nan": the bad row is NaN, the others are fitted
    fit = xp.fit_coefficients(flux, design=TOY, on_bad="nan", ridge=0)
    assert np.isnan(fit.coefficients[1]).all() and not fit.ok[1]
    np.testing.assert_allclose(fit.coefficients[[0, 2]], [[2 / 3, 2 / 3]] * 2, atol=1e-12)


def test_canonical_form_keeps_the_flux_drops_the_near_null_part_and_is_a_projection():
    """Coefficients with junk in the near-null directions -> the same canonical coefficients as
    without it, the same sampled flux up to what the dropped weak directions carry, and applying
    the map twice changes nothing (an orthogonal projection, unlike a ridge fit)."""
    rng = np.random.default_rng(5)
    design = xp.gaiaxpy_design()
    truth, _, norms = well_determined(design, rng, 3)
    _, s, vt = np.linalg.svd(design.matrix / norms, full_matrices=False)
    junk = truth + 0.1 * np.linalg.norm(truth * norms, axis=1, keepdims=True) * vt[-1] / norms
    once = xp.canonical_coefficients(junk)
    twice = xp.canonical_coefficients(once)
    size = np.linalg.norm(truth * norms, axis=1)
    flux = xp.coefficients_to_flux(truth, design)
    # truth lies in directions with s >= 1e-2 s_max, all kept (cutoff 5e-3): nothing of it is lost
    np.testing.assert_allclose(xp.coefficients_to_flux(once, design), flux, atol=1e-9 * np.abs(flux).max())
    assert (np.linalg.norm((once - truth) * norms, axis=1) < 1e-9 * size).all()  # junk removed
    np.testing.assert_allclose(twice, once, rtol=0, atol=1e-12 * np.abs(once).max())
    operator = xp.canonical_operator(design)
    assert np.linalg.matrix_rank(operator) == int((s >= xp.CANONICAL_CUTOFF * s[0]).sum()) == 82
    with pytest.raises(ValueError, match="110"):
        xp.canonical_coefficients(np.ones((2, 109)))
