"""GalProTE (seed 000): stellar age, [M/H] and A_V of galaxies from MUSE-like optical spectra.

Modules, in the order the workflow uses them:
templates / spectra / template_table (E-MILES -> MUSE LSF -> paper grid), trainset (Table 1 recipe),
model / training (GalProTE), mock_cube / cube (IFU cubes -> Voronoi bins), maps (FITS maps),
ppxf_fit (the pPXF baseline), compare and bench (metrics, figures, speed), steps (workflow steps).
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
