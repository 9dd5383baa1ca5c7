"""GalProTE training set (paper: seeds/000, Sects. 2.1-3.3, Table 1) from a processed template grid.

Recipe, per A_V level (16 levels, 0.0-1.5 mag, O'Donnell 1994 with R_V = 3.1), with n_t = n_Z x n_age
templates and counts scaled by ``size_factor`` (1 = the paper: 11 n_t = 6,996 per level for n_t = 636,
111,936 in all; see `table1_counts`):

    original        n_t        each template once (single population, weight 1)
    replica         2 n_t      each template twice more ("three original copies per extinction level")
    combo2..combo5  2 n_t each k distinct random templates, random weights U(0, 1) normalised to 1

then (Sect. 3.1) the weights are scaled by a metallicity prior rising linearly in [M/H] from 0.7 at the
lowest to 1.4 at the highest [M/H] and renormalised, the grid is smoothed with a 3x3 Gaussian
(sigma = 0.7 bins), and the spectrum is recomputed from the smoothed weights:

    spectrum = median-normalise( 10^(-0.4 A_V k(lambda)) * sum_ij w_ij T_ij )[kept pixels]

(light-weighted: the templates T_ij are median-normalised, so w_ij are light fractions). Noise (Sect. 3.2):
the spectra of each split are shuffled into thirds with 0 / 2 / 4 % Gaussian noise (sigma in units of
the median flux), then every spectrum gets 15-25 patches of 3-15 px, each either a high-noise patch
(zero-mean Gaussian, sigma ~ U(0, 25 %)) or a masked patch (replaced by the patch median). Patches are
placed on the 876 kept pixels, i.e. on the spectrum the network sees (Sect. 3.3 stitches the kept parts).

Beyond the paper (``extended`` > 0, off by default): ``extended`` x n_t more spectra per A_V level
whose light is spread over many ages and metallicities (`extended_weights`), as in any real galaxy;
the 1-5 template mixtures above never show the model such a population, and the clipped light-weighted
means of a model trained only on them are biased for one (README, issue 14). They join train /
validation / test; test_unseen keeps its meaning (template combinations never seen) and has none.

Splits. As in the paper, train / validation / test share the same noise-free base spectra and differ
only in their noise realisations (validation and test may be subsets: ``val_fraction``,
``test_fraction``). Because that test set measures denoising more than generalisation, there is also
``test_unseen``: a separate base set (same recipe, ``unseen_fraction`` of the base size) made only of
*combinations* -- the set of templates, regardless of weights and A_V -- whose deterministic hash puts
them in the held-out fraction of combination space; the train/validation/test draws reject those keys.
So no set of templates in test_unseen ever occurs, at any weight or A_V, in training; this includes
single populations: a held-out template is never seen pure in training, only inside mixtures.

Smoothing at the grid edges: each grid point *scatters* its weight to its in-grid 3x3 neighbours with
the Gaussian kernel renormalised over those neighbours, so the total weight is exactly preserved (the
paper: "the combined weight of the resulting population cluster remained consistent").

Everything is drawn from ``numpy.random.SeedSequence(seed)`` children (one stream for each base set and
for each split's noise), so the file is a pure function of (templates, recipe, seed): the same seed
gives the same bytes. The file is written in blocks (memory ~ one block), atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from functools import partial
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from specfm.io import atomic_path

from .spectra import apply_kinematics, attenuate, av_levels
from .template_table import TemplateGrid

log = logging.getLogger(__name__)

FORMAT = "specfm.galaxies.trainset/1"
SPLITS = ("train", "validation", "test", "test_unseen")
MAX_POP = 5
ROWS = ("original", "replica", "combo2", "combo3", "combo4", "combo5", "extended", "sfh")
TABLE1_ROWS = ROWS[:6]  # the paper's; "extended" and "sfh" (beyond the paper): `Recipe.extended` / `.sfh` x n_t
BEYOND_ROWS = ROWS[6:]
ROW_POP = {"original": 1, "replica": 1, "combo2": 2, "combo3": 3, "combo4": 4, "combo5": 5}
ROW_MULT = {"original": 1, "replica": 2, "combo2": 2, "combo3": 2, "combo4": 2, "combo5": 2}  # x n_t
EXTENDED_PARAMS = ("age_mu", "age_sigma", "second_frac", "second_mu", "second_sigma", "mh_mu", "mh_sigma",
                   "amr_slope")
SFH_PARAMS = ("t_start_gyr", "tau_gyr", "burst_frac", "burst_age_gyr", "mh_mu", "mh_sigma", "amr_slope", "unused")
CHUNK_ROWS = 64  # HDF5 chunk: 64 spectra (224 KB of spectra), small enough for random lazy reads
BLOCK = 4096  # spectra computed and written per step (a multiple of CHUNK_ROWS)


@dataclass(frozen=True)
class Recipe:
    """Every knob of the generator; stored as JSON in the file. Defaults are the paper's."""

    size_factor: float = 1.0
    n_av: int = 16
    av_max: float = 1.5
    rv: float = 3.1
    prior_low: float = 0.7  # metallicity prior factor at the lowest [M/H]
    prior_high: float = 1.4  # ... at the highest [M/H], linear in [M/H] between
    smooth_sigma: float = 0.7  # bins, 3x3 kernel
    noise_levels: tuple = (0.0, 0.02, 0.04)  # Gaussian sigma per third, in units of the median flux
    n_patches: tuple = (15, 25)  # inclusive
    patch_width: tuple = (3, 15)  # pixels, inclusive
    patch_sigma_max: float = 0.25
    p_masked_patch: float = 0.5  # probability that a patch is masked (else high-noise)
    val_fraction: float = 1.0  # of the base set, with fresh noise (paper: the whole set)
    test_fraction: float = 1.0
    unseen_fraction: float = 0.1  # held-out share of combination space, and size of test_unseen / base
    unseen_salt: str = "specfm-galprote-unseen-1"
    # Augmentations beyond the paper (0 = off, the paper), see `augment_spectra`:
    vel_max_kms: float = 0.0  # residual line-of-sight velocity ~ U(-v, v)
    sigma_max_kms: float = 0.0  # stellar dispersion ~ U(0, s), on top of the MUSE LSF
    tilt: float = 0.0  # multiplicative continuum 1 + a1 P1 + a2 P2, a_k ~ U(-t, t)
    augment_splits: tuple = ("train", "validation")  # test and test_unseen stay the paper's
    # Extended populations beyond the paper (0 = off): this many x n_t spectra per A_V level whose
    # light spreads over many ages and metallicities, as in a real galaxy (`extended_weights`)
    extended: float = 0.0
    # Star-formation histories beyond the paper (0 = off): this many x n_t spectra per A_V level of a
    # delayed-tau SFH (+ a burst) in mass, turned into light with the templates' M/L (`sfh_weights`)
    sfh: float = 0.0


# ------------------------------------------------------------------------------------ counts


def table1_counts(n_templates: int, size_factor: float = 1.0, n_av: int = 16, extended: float = 0.0,
                  sfh: float = 0.0) -> dict:
    """Table 1 rows per A_V level scaled by ``size_factor`` (plus ``extended`` and ``sfh`` x n_t rows
    beyond the paper, 0 in it), the per-level sum and the total (no spectra).

    >>> table1_counts(636)["total"]
    111936
    """
    rows = {r: int(round(size_factor * ROW_MULT[r] * n_templates)) for r in TABLE1_ROWS}
    rows["extended"] = int(round(size_factor * extended * n_templates))
    rows["sfh"] = int(round(size_factor * sfh * n_templates))
    per_level = sum(rows.values())
    return {"rows": rows, "per_level": per_level, "n_av": n_av, "total": per_level * n_av}


def split_counts(n_templates: int, recipe: Recipe) -> dict:
    """Number of spectra in each split for this recipe."""
    base = table1_counts(n_templates, recipe.size_factor, recipe.n_av, recipe.extended, recipe.sfh)["total"]
    unseen = table1_counts(n_templates, recipe.size_factor * recipe.unseen_fraction, recipe.n_av)["total"]
    return {
        "train": base,
        "validation": int(round(recipe.val_fraction * base)),
        "test": int(round(recipe.test_fraction * base)),
        "test_unseen": unseen if recipe.unseen_fraction > 0 else 0,
    }


# ------------------------------------------------------------------------------ combinations


def combination_key(components) -> tuple[int, ...]:
    """The combination a spectrum is made of: sorted flat template indices (-1 padding dropped)."""
    return tuple(sorted(int(c) for c in np.asarray(components).ravel() if c >= 0))


def is_held_out(key: tuple[int, ...], fraction: float, salt: str = Recipe.unseen_salt) -> bool:
    """Deterministic membership of a combination in the held-out (test_unseen) share of key space."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{salt}|{','.join(map(str, key))}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


@dataclass
class BaseSet:
    """Noise-free recipe draws: what each base spectrum is made of."""

    components: np.ndarray  # [N, 5] int16 flat template index (iz * n_age + ia), -1 = none; sorted
    raw: np.ndarray  # [N, 5] float64 drawn weights (sum 1), 0 where no component
    av_index: np.ndarray  # [N] int8
    row: np.ndarray  # [N] int8 index into ROWS
    params: np.ndarray  # [N, 8] parameters of "extended" (EXTENDED_PARAMS) and "sfh" rows (SFH_PARAMS), NaN else

    def __len__(self):
        return self.av_index.size


def draw_base(n_templates: int, rows: dict, n_av: int, rng: np.random.Generator, *,
              held: bool, fraction: float, salt: str, beyond_rngs: dict | None = None,
              axes: tuple | None = None) -> BaseSet:
    """Draw the base set: for each A_V level, for each Table 1 row, its count of combinations.

    ``held=False`` keeps only combinations outside the held-out share (train/validation/test);
    ``held=True`` only those inside it (test_unseen). Singles cycle through the allowed templates,
    starting at a per-level offset so that small size factors still cover every template.
    ``rows["extended"]`` and ``rows["sfh"]`` rows (if any) close each level, drawn from
    ``beyond_rngs[row]`` over the grid ``axes`` = (log_age, mh), so the other rows are the same with
    or without them.
    """
    ok = lambda key: is_held_out(key, fraction, salt) == held  # noqa: E731
    singles = np.array([t for t in range(n_templates) if ok((t,))], dtype=np.int64)
    comps, raws, avs, row_ids, params = [], [], [], [], []
    for level in range(n_av):
        n_single = rows["original"] + rows["replica"]
        if n_single:
            if singles.size == 0:
                raise ValueError(f"no single template is {'held out' if held else 'allowed'} "
                                 f"(unseen_fraction={fraction}); change the fraction or the size")
            idx = singles[(level * n_single + np.arange(n_single)) % singles.size]
            c = np.full((n_single, MAX_POP), -1, np.int64)
            c[:, 0] = idx
            w = np.zeros((n_single, MAX_POP))
            w[:, 0] = 1.0
            comps.append(c), raws.append(w)
            row_ids.append(np.repeat([0, 1], [rows["original"], rows["replica"]]))
        for r in TABLE1_ROWS[2:]:
            k, n = ROW_POP[r], rows[r]
            if n == 0:
                continue
            if math.comb(n_templates, k) == 0:
                raise ValueError(f"{r}: needs {k} templates, the grid has {n_templates}")
            got = []
            for _ in range(1000):
                m = max(2 * (n - len(got)), 16)
                draw = np.sort(np.argsort(rng.random((m, n_templates)), axis=1)[:, :k], axis=1)
                got += [d for d in draw if ok(tuple(d.tolist()))][: n - len(got)]
                if len(got) == n:
                    break
            else:
                raise ValueError(f"{r}: could not draw {n} {'held-out' if held else 'allowed'} combinations")
            c = np.full((n, MAX_POP), -1, np.int64)
            c[:, :k] = np.array(got)
            w = np.zeros((n, MAX_POP))
            u = rng.random((n, k))
            w[:, :k] = u / u.sum(axis=1, keepdims=True)
            comps.append(c), raws.append(w)
            row_ids.append(np.full(n, ROWS.index(r)))
        for r, draw in (("extended", draw_extended), ("sfh", draw_sfh)):
            n = rows.get(r, 0)
            if n:
                params.append(draw(n, *axes, beyond_rngs[r]))
                comps.append(np.full((n, MAX_POP), -1, np.int64)), raws.append(np.zeros((n, MAX_POP)))
                row_ids.append(np.full(n, ROWS.index(r)))
        n_level = sum(rows.values())
        avs.append(np.full(n_level, level))
    if not comps:
        return BaseSet(np.zeros((0, MAX_POP), np.int16), np.zeros((0, MAX_POP)), np.zeros(0, np.int8),
                       np.zeros(0, np.int8), np.zeros((0, len(EXTENDED_PARAMS))))
    row = np.concatenate(row_ids).astype(np.int8)
    full = np.full((row.size, len(EXTENDED_PARAMS)), np.nan)
    if params:
        full[np.isin(row, [ROWS.index(r) for r in BEYOND_ROWS])] = np.concatenate(params)
    return BaseSet(np.concatenate(comps).astype(np.int16), np.concatenate(raws),
                   np.concatenate(avs).astype(np.int8), row, full)


# ----------------------------------------------------------------------------------- grids


def metallicity_prior(mh, low=0.7, high=1.4) -> np.ndarray:
    """Weight factor per [M/H]: linear in [M/H] from ``low`` at the lowest to ``high`` at the highest."""
    mh = np.asarray(mh, dtype=float)
    if mh.size == 1:
        return np.full(1, 0.5 * (low + high))
    return low + (high - low) * (mh - mh.min()) / (mh.max() - mh.min())


def smoothing_matrix(n_z: int, n_age: int, sigma: float = 0.7) -> np.ndarray:
    """S [n_t, n_t] with smoothed_flat = flat @ S: each cell scatters its weight over its in-grid 3x3
    neighbours with a Gaussian of ``sigma`` bins, renormalised over them (rows of S sum to 1)."""
    n_t = n_z * n_age
    s = np.zeros((n_t, n_t))
    for iz in range(n_z):
        for ia in range(n_age):
            for dz in (-1, 0, 1):
                for da in (-1, 0, 1):
                    jz, ja = iz + dz, ia + da
                    if 0 <= jz < n_z and 0 <= ja < n_age:
                        s[iz * n_age + ia, jz * n_age + ja] = np.exp(-(dz * dz + da * da) / (2 * sigma**2))
    return s / s.sum(axis=1, keepdims=True)


def grid_weights(components, raw, shape, prior, smooth) -> np.ndarray:
    """[B, n_Z, n_age] final weights: scatter the draws, apply the [M/H] prior, renormalise, smooth."""
    n_z, n_age = shape
    b = components.shape[0]
    dense = np.zeros((b, n_z * n_age))
    valid = components >= 0
    rows = np.broadcast_to(np.arange(b)[:, None], components.shape)
    dense[rows[valid], components[valid]] = raw[valid]  # components in a row are distinct
    dense = dense * np.repeat(prior, n_age)[None, :]
    dense /= dense.sum(axis=1, keepdims=True)
    return (dense @ smooth).reshape(b, n_z, n_age)


def draw_extended(n: int, log_age, mh, rng: np.random.Generator) -> np.ndarray:
    """[n, 8] `extended_weights` parameters (columns EXTENDED_PARAMS), drawn wide over the grid: a main
    population centred anywhere in log age with 0.1-0.8 dex of spread, in half of the draws a second one
    (up to half the light, 0.05-0.3 dex), a metallicity spread of 0.05-0.5 dex about any [M/H] of the
    grid, tilted by an age-metallicity slope of -0.3..0.3 dex per dex. Generic on purpose: not the
    mock galaxy's SFH family (which would be training on the test)."""
    la, z = np.asarray(log_age, float), np.asarray(mh, float)
    p = np.empty((n, len(EXTENDED_PARAMS)))
    p[:, 0] = rng.uniform(la.min(), la.max(), n)
    p[:, 1] = rng.uniform(0.1, 0.8, n)
    p[:, 2] = np.where(rng.random(n) < 0.5, rng.uniform(0.0, 0.5, n), 0.0)
    p[:, 3] = rng.uniform(la.min(), la.max(), n)
    p[:, 4] = rng.uniform(0.05, 0.3, n)
    p[:, 5] = rng.uniform(z.min(), z.max(), n)
    p[:, 6] = rng.uniform(0.05, 0.5, n)
    p[:, 7] = rng.uniform(-0.3, 0.3, n)
    return p


def _gauss_on_grid(x, mu, sigma, axis: int) -> np.ndarray:
    """exp(-(x - mu)^2 / 2 sigma^2) normalised to sum 1 along ``axis``; stable when sigma is far
    below the grid spacing (the nearest grid point then takes all)."""
    e = -0.5 * ((x - mu) / sigma) ** 2
    p = np.exp(e - e.max(axis=axis, keepdims=True))
    return p / p.sum(axis=axis, keepdims=True)


def _mh_given_age(mh, centre, sigma) -> np.ndarray:
    """[B, n_Z, n_age] P([M/H] | age): a Gaussian of ``sigma`` [B] about ``centre`` [B, n_age] on the grid."""
    z = np.asarray(mh, float)[None, :, None]
    return _gauss_on_grid(z, centre[:, None, :], np.asarray(sigma, float)[:, None, None], 1)


def extended_weights(params, log_age, mh) -> np.ndarray:
    """[B, n_Z, n_age] light fractions of extended populations: P(age) is one or two Gaussians in log
    age, P([M/H] | age) a Gaussian about mh_mu + amr_slope (log age - age_mu). Real galaxies spread
    their light over many ages and metallicities, which the paper's 1-5 template mixtures never show."""
    p = np.asarray(params, float)
    la = np.asarray(log_age, float)[None, :]
    col = {name: p[:, i:i + 1] for i, name in enumerate(EXTENDED_PARAMS)}
    age = ((1.0 - col["second_frac"]) * _gauss_on_grid(la, col["age_mu"], col["age_sigma"], 1)
           + col["second_frac"] * _gauss_on_grid(la, col["second_mu"], col["second_sigma"], 1))
    centre = col["mh_mu"] + col["amr_slope"] * (la - col["age_mu"])  # [B, n_age]
    return age[:, None, :] * _mh_given_age(mh, centre, col["mh_sigma"][:, 0])


def draw_sfh(n: int, log_age, mh, rng: np.random.Generator) -> np.ndarray:
    """[n, 8] `sfh_weights` parameters (columns SFH_PARAMS), drawn wide: star formation started
    U(1, 13.5) Gyr ago with a delayed-tau rate, tau log-uniform in 0.1-15 Gyr; in half of the draws a
    burst of log-uniform 0.1-20 % of the mass at an age log-uniform between the grid's youngest and
    3 Gyr; [M/H] as in `draw_extended`."""
    la, z = np.asarray(log_age, float), np.asarray(mh, float)
    young = 10 ** la.min() / 1e9
    p = np.zeros((n, len(SFH_PARAMS)))
    p[:, 0] = rng.uniform(1.0, 13.5, n)
    p[:, 1] = 10 ** rng.uniform(np.log10(0.1), np.log10(15.0), n)
    p[:, 2] = np.where(rng.random(n) < 0.5, 10 ** rng.uniform(-3.0, np.log10(0.2), n), 0.0)
    p[:, 3] = 10 ** rng.uniform(np.log10(young), np.log10(3.0), n)
    p[:, 4] = rng.uniform(z.min(), z.max(), n)
    p[:, 5] = rng.uniform(0.05, 0.5, n)
    p[:, 6] = rng.uniform(-0.3, 0.3, n)
    return p


def _age_bin_mass(age_gyr, t_start, tau, n_sub: int = 64) -> np.ndarray:
    """[B, n_age] mass formed in each age bin (edges halfway in log age) by a delayed-tau rate
    SFR(t) ~ t exp(-t / tau), t = t_start - age the time since the start, by the midpoint rule."""
    la = np.log10(age_gyr)
    edges = np.concatenate([[la[0] - (la[1] - la[0]) / 2], (la[1:] + la[:-1]) / 2, [la[-1] + (la[-1] - la[-2]) / 2]])
    u = (np.arange(n_sub) + 0.5) / n_sub
    sub = 10 ** (edges[:-1, None] + u[None, :] * np.diff(edges)[:, None])  # [n_age, n_sub] ages in Gyr
    dt = sub * np.log(10.0) * (np.diff(edges)[:, None] / n_sub)  # d(age) = age ln10 d(log age)
    t = t_start[:, None, None] - sub[None]
    rate = np.where(t > 0, t * np.exp(-t / tau[:, None, None]), 0.0)
    return (rate * dt[None]).sum(axis=-1)


def sfh_weights(params, log_age, mh, norm) -> np.ndarray:
    """[B, n_Z, n_age] light fractions of a delayed-tau SFH plus a burst (mass), with [M/H] per age a
    Gaussian about mh_mu + amr_slope (log age - 9.5), turned into light with ``norm`` [n_Z, n_age]
    (the templates' median flux per unit mass, `TemplateGrid.norm`). An old population dominates
    the light of such an SFH less than its mass; the model must see both."""
    p = np.asarray(params, float)
    col = {name: p[:, i] for i, name in enumerate(SFH_PARAMS)}
    age_gyr = 10 ** np.asarray(log_age, float) / 1e9
    mass = _age_bin_mass(age_gyr, col["t_start_gyr"], col["tau_gyr"])
    mass /= np.maximum(mass.sum(axis=1, keepdims=True), 1e-300)
    burst = np.abs(np.log10(age_gyr)[None, :] - np.log10(col["burst_age_gyr"])[:, None]).argmin(axis=1)
    mass *= (1.0 - col["burst_frac"])[:, None]
    mass[np.arange(len(p)), burst] += col["burst_frac"]
    la = np.asarray(log_age, float)[None, :]
    centre = col["mh_mu"][:, None] + col["amr_slope"][:, None] * (la - 9.5)  # [B, n_age]
    light = mass[:, None, :] * _mh_given_age(mh, centre, col["mh_sigma"]) * np.asarray(norm, float)[None]
    return light / light.sum(axis=(1, 2), keepdims=True)


def base_weights(src: BaseSet, idx, templates: TemplateGrid, prior, smooth) -> np.ndarray:
    """[B, n_Z, n_age] weights of base rows ``idx``: Table 1 rows through `grid_weights`, the rows
    beyond the paper through `extended_weights` / `sfh_weights` (smooth already; their [M/H] is drawn)."""
    log_age, mh = templates.log_age, templates.mh
    shape = (len(mh), len(log_age))
    idx = np.asarray(idx)
    row = src.row[idx]
    w = np.empty((len(idx), *shape))
    paper = ~np.isin(row, [ROWS.index(r) for r in BEYOND_ROWS])
    if paper.any():
        i = idx[paper]
        w[paper] = grid_weights(src.components[i].astype(np.int64), src.raw[i], shape, prior, smooth)
    ext, sfh = row == ROWS.index("extended"), row == ROWS.index("sfh")
    if ext.any():
        w[ext] = extended_weights(src.params[idx[ext]], log_age, mh)
    if sfh.any():
        w[sfh] = sfh_weights(src.params[idx[sfh]], log_age, mh, templates.norm)
    return w


def model_spectra(flux_flat, mask, factors, weights_flat, transform=None) -> np.ndarray:
    """Median-normalised kept-pixel spectra [B, n_kept] of templates ``flux_flat`` [n_t, n_pix] mixed
    with ``weights_flat`` [B, n_t] and attenuated by ``factors`` [B, n_pix] (10^(-0.4 A_V k));
    ``transform`` (e.g. `augment_spectra`) acts on the full-grid spectra before the mask."""
    spec = (weights_flat @ flux_flat) * factors  # [B, n_pix]
    if transform is not None:
        spec = transform(spec)
    kept = spec[:, mask]
    return kept / np.median(kept, axis=1, keepdims=True)


def attenuation_factors(wave, av, rv=3.1) -> np.ndarray:
    """[len(av), n_pix] O'Donnell (1994) transmission for each A_V."""
    return attenuate(wave, np.ones(len(wave)), np.atleast_1d(np.asarray(av, dtype=float)), rv=rv)


# ----------------------------------------------------------------------------- augmentation


@dataclass
class Augmentation:
    """Per-spectrum draws of `augment_spectra` (stored with the split, so they can be inspected)."""

    vel_kms: np.ndarray  # [B]
    sigma_kms: np.ndarray  # [B]
    tilt: np.ndarray  # [B, 2] Legendre coefficients a1, a2

    @classmethod
    def draw(cls, n: int, recipe: Recipe, rng: np.random.Generator) -> "Augmentation":
        return cls(rng.uniform(-recipe.vel_max_kms, recipe.vel_max_kms, n),
                   rng.uniform(0.0, recipe.sigma_max_kms, n),
                   rng.uniform(-recipe.tilt, recipe.tilt, (n, 2)))

    @classmethod
    def none(cls, n: int) -> "Augmentation":
        return cls(np.zeros(n), np.zeros(n), np.zeros((n, 2)))


def augment_spectra(wave, spec, aug: Augmentation) -> np.ndarray:
    """What a real galaxy adds to a template mixture and the paper's training set lacks: a residual
    line-of-sight velocity and a stellar dispersion (a real galaxy has 30-250 km/s; the templates
    carry only the MUSE LSF), and a smooth flux-calibration error (a low-order multiplicative
    Legendre tilt; the paper fits no multiplicative polynomial). Without them the model reads a
    broadened spectrum's shallower metal lines as an older, metal-poorer population."""
    out = spec
    if np.any(aug.vel_kms) or np.any(aug.sigma_kms):
        out = apply_kinematics(wave, out, aug.vel_kms, aug.sigma_kms)
    if np.any(aug.tilt):
        x = np.linspace(-1.0, 1.0, np.shape(wave)[-1])
        out = out * (1.0 + aug.tilt[:, :1] * x + aug.tilt[:, 1:] * (1.5 * x**2 - 0.5))
    return out


def _augments(recipe: Recipe, split: str) -> bool:
    return split in recipe.augment_splits and bool(recipe.vel_max_kms or recipe.sigma_max_kms or recipe.tilt)


# ----------------------------------------------------------------------------------- noise


def add_noise(flux, level, rng: np.random.Generator, *, n_patches=(15, 25), width=(3, 15),
              sigma_max=0.25, p_masked=0.5):
    """Noise phases of Sect. 3.2 on median-normalised spectra ``flux`` [B, n] (a new array is returned).

    1. Gaussian noise of sigma ``level`` [B] (units of the median flux);
    2. per spectrum n_patches[0]..n_patches[1] patches of width[0]..width[1] px at random positions,
       each masked (with probability ``p_masked``: replaced by the median of the patch) or high-noise
       (zero-mean Gaussian, sigma ~ U(0, sigma_max)); later patches act on the result of earlier ones.

    Returns (noisy [B, n], patched [B, n] bool: pixels touched by a patch, count [B]: patches drawn).
    """
    flux = np.asarray(flux, dtype=np.float64)
    b, n = flux.shape
    out = flux + np.asarray(level, dtype=float).reshape(-1, 1) * rng.standard_normal((b, n))
    patched = np.zeros((b, n), bool)
    lo, hi = n_patches
    if hi <= 0:
        return out, patched, np.zeros(b, np.int64)
    count = rng.integers(lo, hi + 1, size=b)
    wmax = width[1]
    flat, pflat = out.reshape(-1), patched.reshape(-1)
    offs = np.arange(wmax)[None, :]
    for p in range(hi):
        w = rng.integers(width[0], width[1] + 1, size=b)
        start = rng.integers(0, n - w + 1)
        masked = rng.random(b) < p_masked
        sigma = rng.uniform(0.0, sigma_max, size=b)
        z = rng.standard_normal((b, wmax))
        active = (p < count)[:, None] & (offs < w[:, None])  # [B, wmax]
        idx = np.arange(b)[:, None] * n + np.minimum(start[:, None] + offs, n - 1)
        vals = np.where(active, flat[idx], np.nan)
        masked &= p < count  # rows without a patch p have no median to take
        med = np.zeros(b)
        if masked.any():
            med[masked] = np.nanmedian(vals[masked], axis=1)
        new = np.where(masked[:, None], med[:, None], vals + sigma[:, None] * z)
        flat[idx[active]] = new[active]
        pflat[idx[active]] = True
    return out, patched, count


# ----------------------------------------------------------------------------------- writer


def _seeds(seed: int) -> dict:
    # new streams go at the end: SeedSequence children keep their index, so old streams stay the same
    names = ("base", "unseen", "subsets", *(f"noise_{s}" for s in SPLITS), *(f"augment_{s}" for s in SPLITS),
             "extended", "sfh")
    return dict(zip(names, np.random.SeedSequence(seed).spawn(len(names))))


def build_training_set(templates: TemplateGrid, out_path, *, size_factor: float = 1.0, seed: int = 0,
                       progress: bool = True, recipe: Recipe | None = None, **overrides) -> dict:
    """Generate the four splits from ``templates`` and write them to ``out_path`` (HDF5, atomically).

    ``recipe`` (default: the paper's) with ``size_factor`` and any other `Recipe` field in
    ``overrides``. Returns {"counts": {split: N}, "table1": table1_counts(...), "recipe": {...}}.

    Layout: per split ``{split}/spectra [N, n_kept] f4``, ``weights [N, n_Z, n_age] f4`` (sum 1),
    ``av_index [N] i1``, ``av [N] f4``, ``noise_level [N] f4``, ``n_patches [N] i1``,
    ``components [N, 5] i2`` (flat template indices, -1 padded: the combination key), ``row [N] i1``
    (index into ROWS), ``base_index [N] i4``, the augmentation draws ``vel_kms [N]``, ``sigma_kms [N]``,
    ``tilt [N, 2]`` (zeros where a split is not augmented); the templates under ``templates/``; root attributes
    ``log_age``, ``mh``, ``av_levels``, ``wave`` (kept pixels), ``recipe`` and ``counts`` (JSON).
    """
    recipe = Recipe(**{**asdict(recipe or Recipe()), "size_factor": size_factor, **overrides})
    n_z, n_age, n_pix = templates.flux.shape
    n_t = n_z * n_age
    mask = np.asarray(templates.mask, bool)
    seeds = _seeds(seed)
    levels = av_levels(recipe.n_av, recipe.av_max)
    table = table1_counts(n_t, recipe.size_factor, recipe.n_av, recipe.extended, recipe.sfh)
    salt, frac = recipe.unseen_salt, recipe.unseen_fraction
    base = draw_base(n_t, table["rows"], recipe.n_av, np.random.default_rng(seeds["base"]),
                     held=False, fraction=frac, salt=salt,
                     beyond_rngs={r: np.random.default_rng(seeds[r]) for r in BEYOND_ROWS},
                     axes=(templates.log_age, templates.mh))
    unseen_rows = table1_counts(n_t, recipe.size_factor * frac, recipe.n_av)["rows"]
    unseen = (draw_base(n_t, unseen_rows, recipe.n_av, np.random.default_rng(seeds["unseen"]),
                        held=True, fraction=frac, salt=salt) if frac > 0 else None)
    counts = split_counts(n_t, recipe)
    empty = [k for k, v in counts.items() if v == 0 and (k != "test_unseen" or frac > 0)]
    if empty:  # h5py cannot chunk an empty dataset, and an empty split is useless anyway
        raise ValueError(f"{out_path}: size_factor {recipe.size_factor} with {n_t} templates leaves "
                         f"no {', '.join(empty)} spectra ({counts}); raise galaxies.trainset.size_factor")
    sub_rng = np.random.default_rng(seeds["subsets"])
    index = {
        "train": np.arange(len(base)),
        "validation": np.sort(sub_rng.permutation(len(base))[: counts["validation"]]),
        "test": np.sort(sub_rng.permutation(len(base))[: counts["test"]]),
        "test_unseen": np.arange(counts["test_unseen"]),
    }
    sources = {"train": base, "validation": base, "test": base, "test_unseen": unseen}

    flux_flat = np.asarray(templates.flux, dtype=np.float64).reshape(n_t, n_pix)
    prior = metallicity_prior(templates.mh, recipe.prior_low, recipe.prior_high)
    smooth = smoothing_matrix(n_z, n_age, recipe.smooth_sigma)
    factors = attenuation_factors(templates.wave, levels, recipe.rv)  # [n_av, n_pix]
    n_kept = int(mask.sum())
    total = sum(counts.values())
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="galaxies trainset", unit="spec", mininterval=1.0)

    meta = {"format": FORMAT, "recipe": asdict(recipe), "seed": seed, "counts": counts, "table1": table,
            "rows": list(ROWS), "chunk_rows": CHUNK_ROWS, "block": BLOCK,
            "spectrum": "median-normalise(10^(-0.4 A_V k_O94(lambda)) * sum_ij w_ij T_ij)[mask], "
                        "then noise; T_ij median-normalised templates, w the stored weights",
            }
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as h5:
            h5.attrs["format"] = FORMAT
            h5.attrs["meta"] = json.dumps(meta, sort_keys=True, default=_json_default)
            h5.attrs["log_age"] = np.asarray(templates.log_age, float)
            h5.attrs["mh"] = np.asarray(templates.mh, float)
            h5.attrs["av_levels"] = levels
            h5.attrs["wave"] = np.asarray(templates.wave, float)[mask]
            tg = h5.create_group("templates", track_order=False)
            for name in ("wave", "flux", "log_age", "mh", "mask", "norm"):
                tg.create_dataset(name, data=np.asarray(getattr(templates, name)), track_times=False)
            # the template table's metadata can outgrow an attribute (64 KB): a byte dataset of JSON
            tmeta = json.dumps(templates.meta, sort_keys=True, default=_json_default).encode()
            tg.create_dataset("meta_json", data=np.frombuffer(tmeta, np.uint8), track_times=False)
            for split in SPLITS:
                n = counts[split]
                src, idx = sources[split], index[split]
                rng = np.random.default_rng(seeds[f"noise_{split}"])
                aug_rng = np.random.default_rng(seeds[f"augment_{split}"])
                phase = np.empty(n, np.int64)
                phase[rng.permutation(n)] = np.arange(n) * len(recipe.noise_levels) // max(n, 1)
                level = np.asarray(recipe.noise_levels, float)[phase]
                g = h5.create_group(split, track_order=False)
                ds = _create(g, n, n_kept, (n_z, n_age))
                for lo in range(0, n, BLOCK):
                    hi = min(lo + BLOCK, n)
                    bi = idx[lo:hi]
                    comp, avi = src.components[bi], src.av_index[bi]
                    w = base_weights(src, bi, templates, prior, smooth)
                    aug = (Augmentation.draw(hi - lo, recipe, aug_rng) if _augments(recipe, split)
                           else Augmentation.none(hi - lo))
                    clean = model_spectra(flux_flat, mask, factors[avi], w.reshape(-1, n_t),
                                          transform=partial(augment_spectra, templates.wave, aug=aug))
                    noisy, _, n_patch = add_noise(
                        clean, level[lo:hi], rng, n_patches=recipe.n_patches, width=recipe.patch_width,
                        sigma_max=recipe.patch_sigma_max, p_masked=recipe.p_masked_patch)
                    ds["spectra"][lo:hi] = noisy.astype(np.float32)
                    ds["weights"][lo:hi] = w.astype(np.float32)
                    ds["av_index"][lo:hi] = avi
                    ds["av"][lo:hi] = levels[avi].astype(np.float32)
                    ds["noise_level"][lo:hi] = level[lo:hi].astype(np.float32)
                    ds["n_patches"][lo:hi] = n_patch
                    ds["components"][lo:hi] = comp
                    ds["row"][lo:hi] = src.row[bi]
                    ds["base_index"][lo:hi] = bi
                    ds["vel_kms"][lo:hi] = aug.vel_kms.astype(np.float32)
                    ds["sigma_kms"][lo:hi] = aug.sigma_kms.astype(np.float32)
                    ds["tilt"][lo:hi] = aug.tilt.astype(np.float32)
                    if bar is not None:
                        bar.update(hi - lo)
    if bar is not None:
        bar.close()
    log.info("wrote %s: %s spectra (%s)", out_path, total, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return {"counts": counts, "table1": table, "recipe": asdict(recipe)}


def _create(g, n, n_kept, shape) -> dict:
    rows = max(1, min(CHUNK_ROWS, n))
    kw = dict(track_times=False)
    return {
        "spectra": g.create_dataset("spectra", (n, n_kept), np.float32, chunks=(rows, n_kept), **kw),
        "weights": g.create_dataset("weights", (n, *shape), np.float32, chunks=(rows, *shape),
                                    compression="gzip", compression_opts=4, shuffle=True, **kw),
        "av_index": g.create_dataset("av_index", (n,), np.int8, **kw),
        "av": g.create_dataset("av", (n,), np.float32, **kw),
        "noise_level": g.create_dataset("noise_level", (n,), np.float32, **kw),
        "n_patches": g.create_dataset("n_patches", (n,), np.int8, **kw),
        "components": g.create_dataset("components", (n, MAX_POP), np.int16, **kw),
        "row": g.create_dataset("row", (n,), np.int8, **kw),
        "base_index": g.create_dataset("base_index", (n,), np.int32, **kw),
        "vel_kms": g.create_dataset("vel_kms", (n,), np.float32, **kw),
        "sigma_kms": g.create_dataset("sigma_kms", (n,), np.float32, **kw),
        "tilt": g.create_dataset("tilt", (n, 2), np.float32, **kw),
    }


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


# ----------------------------------------------------------------------------------- reading


def read_meta(path) -> dict:
    """Root metadata: the JSON ``meta`` plus the axes log_age, mh, av_levels, wave (kept pixels)."""
    with h5py.File(path, "r") as h5:
        if h5.attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: not a training set of format {FORMAT}")
        meta = json.loads(h5.attrs["meta"])
        for name in ("log_age", "mh", "av_levels", "wave"):
            meta[name] = np.asarray(h5.attrs[name])
    return meta


def read_templates(path) -> TemplateGrid:
    """The template grid stored in a training set (what its spectra were made from)."""
    with h5py.File(path, "r") as h5:
        arrays = {k: h5["templates"][k][()] for k in ("wave", "flux", "log_age", "mh", "mask", "norm")}
        meta = json.loads(h5["templates"]["meta_json"][()].tobytes())
    return TemplateGrid(meta=meta, **arrays)


def load_split(path, split: str, fields=("spectra", "weights", "av_index"), limit: int | None = None) -> dict:
    """The named datasets of one split as numpy arrays (the first ``limit`` rows if given)."""
    with h5py.File(path, "r") as h5:
        g = h5[split]
        sl = slice(None) if limit is None else slice(0, limit)
        return {f: g[f][sl] for f in fields}


def split_tensors(path, split: str):
    """One split as a torch TensorDataset of (spectrum [n_kept], weights [n_Z, n_age], av_index).

    Loaded whole: the training loop's fast path (the full-scale split fits in a GPU node's memory;
    a lazy row-by-row reader had no caller).
    """
    import torch
    from torch.utils.data import TensorDataset
    d = load_split(path, split)
    return TensorDataset(torch.from_numpy(d["spectra"]), torch.from_numpy(d["weights"]),
                         torch.from_numpy(d["av_index"].astype(np.int64)))
