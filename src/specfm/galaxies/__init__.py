"""GalProTE (seed 000): stellar age, [M/H] and A_V of galaxies from MUSE-like optical spectra.

This part prepares the E-MILES SSP templates: read the grid, match the MUSE LSF, rebin to the
paper's 4749.37-7100.49 A grid, mask Table 2's emission/sky regions, attenuate with O'Donnell 1994.
"""

from .spectra import (
    attenuate,
    av_levels,
    emiles_fwhm,
    emission_mask,
    match_lsf,
    muse_lsf_fwhm,
    paper_wavelength_grid,
    resample,
)
from .template_table import TemplateGrid, plot_templates, prepare_templates, read_template_table, write_template_table
from .templates import SSPGrid, parse_ssp_name, read_ssp, read_ssp_grid

__all__ = [
    "SSPGrid",
    "TemplateGrid",
    "attenuate",
    "av_levels",
    "emiles_fwhm",
    "emission_mask",
    "match_lsf",
    "muse_lsf_fwhm",
    "paper_wavelength_grid",
    "parse_ssp_name",
    "plot_templates",
    "prepare_templates",
    "read_ssp",
    "read_ssp_grid",
    "read_template_table",
    "resample",
    "write_template_table",
]
