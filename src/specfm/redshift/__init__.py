"""redshift: SpecPT (seed 002) with Redrock side by side.

Spectra (mock DESI-like from E-MILES, the DESI coadds shipped in a wheel, or the DESI EDR tree)
-> one wavelength grid (`grid`) -> chunked HDF5 (`spectra`) -> autoencoder pretraining
(`autoencoder`) -> k-fold redshift models (`zmodel`, `training`) -> Redrock on PCA templates built
from the same SSPs (`rrtemplates`, `rrfit`), full scan and SpecPT-narrowed (hybrid) -> catalogue,
metrics (`metrics`) and figures (`figures`). `steps` holds what the rule scripts call.
"""
