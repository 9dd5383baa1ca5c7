"""specfm: stellar and galactic property catalogues and maps from public survey data.

The library is importable without Snakemake; the workflow's scripts are thin wrappers around it.
"""

__version__ = "0.1.0"
