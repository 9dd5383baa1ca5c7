"""A labelled fake raw catalogue in the stars column contract (a test fixture, not science).

Stars whose XP coefficients and colours are smooth functions of Teff, logg and [Fe/H], so a
model that learns anything beats the constant predictor. Gaps (no 2MASS, no XP, sentinels) are
sprinkled in the way archives have them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from specfm.stars import columns as C


def fake_raw(n: int, seed: int = 0, first_id: int = 10**15) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    teff = rng.uniform(4000, 7000, n)
    logg = rng.uniform(1.0, 4.8, n)
    feh = rng.uniform(-1.5, 0.4, n)
    t = (teff - 5500) / 1500
    g = rng.uniform(9, 16, n)
    df = pd.DataFrame({c: np.full(n, np.nan) for c in C.RAW_COLUMNS + C.LABELS + C.LABEL_ERRORS})
    df["source_id"] = first_id + np.arange(n) * 7919
    df["healpix"] = C.healpix_from_source_id(df["source_id"].to_numpy(), 5)
    df["ra"], df["dec"] = rng.uniform(0, 360, n), rng.uniform(-60, 60, n)
    df["phot_g_mean_mag"] = g
    df["phot_bp_mean_mag"] = g + 0.4 - 0.5 * t
    df["phot_rp_mean_mag"] = g - 0.5 + 0.4 * t
    flux_g = 10 ** (-0.4 * (g - 25.6874))
    k = np.arange(C.N_XP)
    shape_bp = np.exp(-k / 8)[None] * (1 + 0.3 * t[:, None] * np.cos(k / 3)[None]
                                       + 0.1 * feh[:, None] * np.sin(k / 2)[None])
    shape_rp = np.exp(-k / 10)[None] * (1 - 0.2 * t[:, None] * np.sin(k / 4)[None]
                                        + 0.05 * (logg[:, None] - 3) * np.cos(k / 5)[None])
    df[C.XP_BP] = shape_bp * flux_g[:, None]
    df[C.XP_RP] = shape_rp * flux_g[:, None]
    df["tmass_j"] = g - 1.2 + 0.6 * t
    df["tmass_h"] = g - 1.6 + 0.8 * t + 0.05 * (logg - 3)
    df["tmass_ks"] = g - 1.7 + 0.85 * t
    df["w1"], df["w2"] = g - 1.8 + 0.9 * t, g - 1.8 + 0.9 * t + 0.02 * feh
    df["parallax"] = rng.uniform(0.2, 3, n)
    df["parallax_error"] = 0.02
    df["pmra"], df["pmdec"] = rng.normal(0, 5, n), rng.normal(0, 5, n)
    df["ebv"] = rng.uniform(0, 0.1, n)
    df["teff"], df["logg"], df["fe_h"] = teff, logg, feh
    df["teff_err"], df["logg_err"], df["fe_h_err"] = 50.0, 0.05, 0.03
    no_xp = rng.random(n) < 0.1
    df.loc[no_xp, C.XP] = np.nan
    df.loc[rng.random(n) < 0.1, "tmass_j"] = -9999.0  # a sentinel, must become missing
    return df


def sigterm_at(base, kill_at):
    """A loss_fn that sends this process SIGTERM at training call `kill_at` (None: never), as a
    preempting scheduler would, and is `base` otherwise (resume tests)."""
    import os
    import signal

    calls = {"n": 0}

    def loss_fn(m, batch):
        calls["n"] += 1
        if m.training and calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return base(m, batch)

    return loss_fn
