"""TransformerPayne and its three baselines (seed 001): labels -> normalised flux emulators.

Modules: grid (the HDF5 grid layout, its reader/validator, splits, domain filters), continuum
(continuum normalisation), miles (the embedded MILES stars), user_grid (a user's synthetic grid),
payne / bigpayne / conv / transformer_payne (one model each), models (the registry and the shared
label scaling), schedule (warm-up + cosine), training (steps-based AdamW through specfm.train),
scores (MSE, MAE, MAQE_0.95, chi^2), inference (label fitting), figures, bench, steps (what the
rule scripts call).
"""
