"""Where a GalProTE model's bias on a mock galaxy comes from (issue 14).

    python -m specfm.galaxies.diagnose --model M --templates T --bins B --truth TRUTH [--clip 0 0.05]

Scores the model, per Voronoi bin against the mock's truth, on three inputs that differ in one step
each: (1) ``clean``: noiseless spectra built exactly as the training set builds them
(`trainset.model_spectra`) from each bin's *true* light weights and A_V; (2) ``clean_sigma``: the same
with the bin's true stellar dispersion applied; (3) ``bins``: the mock's binned spectra themselves.
A bias already present in (1) comes from the populations (weights) the model meets, not from noise,
kinematics or the cube's preprocessing; (2) - (1) is the dispersion's share and (3) - (2) the rest
(noise, emission-line filtering, binning). Each is scored at every clip fraction given (Sect. 3.4.3
zeroes weights below that fraction of the peak before the light-weighted means) and, for a model with
the mean head, by that head too (``head``: no clip involved).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def inputs(templates, bins, truth_bins) -> dict:
    """The three input sets of the module docstring, [n_bins, n_kept] each."""
    from .spectra import apply_kinematics
    from .trainset import attenuation_factors, model_spectra

    w = np.asarray(truth_bins["WEIGHTS"], float)
    n = w.shape[0]
    flux = np.asarray(templates.flux, float).reshape(-1, templates.flux.shape[-1])
    factors = attenuation_factors(templates.wave, truth_bins["AV"])
    sigma = np.asarray(truth_bins["SIGMA"], float)

    def broaden(spec):
        return apply_kinematics(templates.wave, spec, np.zeros(n), sigma)

    return {"clean": model_spectra(flux, templates.mask, factors, w.reshape(n, -1)),
            "clean_sigma": model_spectra(flux, templates.mask, factors, w.reshape(n, -1), transform=broaden),
            "bins": np.asarray(bins.spectra)}


def score(model, templates, spectra, truth_bins, clip: float, estimate: str = "grid") -> dict:
    """Bias / scatter of light-weighted log age, [M/H] and A_V against the truth per bin."""
    from .compare import diff_stats
    from .fast_inference import estimates

    est = estimates(model, spectra, templates.log_age, templates.mh, frac=clip, estimate=estimate,
                    inference={"backend": "eager"})
    return {name: diff_stats(np.asarray(est[key], float) - np.asarray(truth_bins[name], float))
            for name, key in (("LOGAGE", "log_age"), ("MH", "mh"), ("AV", "av"))}


def diagnose(model_path, templates_path, bins_path, truth_path, clips=(0.0, 0.05)) -> dict:
    from .cube import read_bins
    from .mock_cube import read_truth, truth_per_bin
    from .template_table import read_template_table
    from .training import load_galprote

    templates = read_template_table(templates_path)
    bins = read_bins(bins_path)
    truth_bins = truth_per_bin(read_truth(truth_path), bins.bin_id)
    model, _ = load_galprote(model_path)
    sets = inputs(templates, bins, truth_bins)
    out = {name: {f"clip_{c:g}": score(model, templates, spec, truth_bins, c) for c in clips}
           for name, spec in sets.items()}
    if model.cfg.mean_head:
        for name, spec in sets.items():
            out[name]["head"] = score(model, templates, spec, truth_bins, 0.0, "head")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m specfm.galaxies.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--templates", required=True)
    p.add_argument("--bins", required=True)
    p.add_argument("--truth", required=True, help="the mock's truth file (results/{galaxy}_truth.fits)")
    p.add_argument("--clip", type=float, nargs="+", default=[0.0, 0.05])
    a = p.parse_args(argv)
    print(json.dumps(diagnose(a.model, a.templates, a.bins, a.truth, a.clip), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
