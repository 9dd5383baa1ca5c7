# Constants and helper functions of the rules in workflow/rules/fetch.smk, kept apart from the rules as
# Snakemake's linter asks. Sources of kind http_grid (one file per grid point, specfm.fetch.grid_source)
# get one fetch job per file; every other source one fetch rule (and an unpack rule for `members`).

from specfm.fetch.grid_source import grid_files as _grid_files

GRID_SOURCES = {name: s for name, s in SOURCES.items() if s["kind"] == "http_grid"}
FILE_SOURCES = {name: s for name, s in SOURCES.items() if s["kind"] != "http_grid"}


def grid_source_paths(name):
    """Every file of an http_grid source, the wavelength file first: one fetch job each."""
    return [f"resources/archives/{name}/{f}" for f in _grid_files(name, SOURCES[name])]


def grid_source_of(wildcards):
    return SOURCES[wildcards.gsource]


def fetched_output(name):
    path = archive_path(name)
    sha = SOURCES[name].get("sha256")
    return ensure(path, sha256=sha) if sha else path


def unpack_pin(name):
    """What the unpack step checks the archive against (a file placed by hand skips the fetch rule):
    the config's pin, else the lock entry the fetch recorded."""
    sha = SOURCES[name].get("sha256")
    return {
        "sha256": sha,
        "what": f"config sources.{name}.sha256" if sha else "",
        "lock_path": None if sha else config["checksum_lock"],
        "lock_key": None if sha else f"{name}/{SOURCES[name]['filename']}",
    }
