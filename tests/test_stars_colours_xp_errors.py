"""stars, issue 15 part 2: colours derived in the MSA's input stage (`stars.model.colours`) and XP
errors with the training augmentation within them (`stars.*.xp_noise`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from stars_fakes import fake_raw, sigterm_at

from specfm.stars import columns as C
from specfm.stars import xp
from specfm.stars.features import FeatureError, build_features, features_from_raw, load_scaling
from specfm.stars.training import (build_model, make_loss, masking_policy, require_xp_errors,
                                   training_stream, validation_set, xp_noise)

TINY_ARCH = dict(d_embedding=4, n_frequencies=4, frequency_scale=0.1, widths=[32, 32, 16, 16],
                 latent=8, dropout=0.0, head_width=16, head_layers=3)
INDEX = {name: i for i, name in enumerate(C.FEATURES)}


def with_errors(raw, rel=0.02):
    """A raw frame with XP errors: `rel` of each coefficient plus a floor (NaN where XP is)."""
    coeffs = raw[C.XP].to_numpy()
    errors = pd.DataFrame(rel * np.abs(coeffs) + 1e-3 * np.abs(coeffs[:, :1]), columns=C.XP_ERR,
                          index=raw.index)
    return pd.concat([raw, errors], axis=1)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("colours")
    raw = with_errors(fake_raw(1500, seed=5))
    chunks = [(f"c{i}", raw.iloc[i:i + 500]) for i in range(0, len(raw), 500)]
    build_features(chunks, d / "f.parquet", d / "scaling.json", seed=3, reservoir=10**6)
    return d, raw


def colour_model(scaling):
    torch.manual_seed(0)
    return build_model({**TINY_ARCH, "colours": True}, scaling).eval()


# --- colours ---

def test_colour_scaling_is_sampled_from_the_differences_of_the_training_magnitudes(table):
    d, _ = table
    feats = pq.read_table(d / "f.parquet").to_pandas()
    train = feats[feats["split"] == "train"]
    stats = load_scaling(d / "scaling.json")
    bp_rp = (train["phot_bp_mean_mag"].astype(float) - train["phot_rp_mean_mag"].astype(float)).dropna()
    assert stats["phot_bp_mean_mag-phot_rp_mean_mag"]["median"] == pytest.approx(bp_rp.median(), abs=1e-6)
    j_h = (train["tmass_j"].astype(float) - train["tmass_h"].astype(float)).dropna()  # J has gaps
    assert stats["tmass_j-tmass_h"]["n"] == len(j_h) < len(train)
    assert stats["sm_u-sm_v"]["n"] == 0  # no SkyMapper in the fake: no values, never invented
    assert not set(C.COLOURS) & set(feats.columns)  # statistics only, the table does not store them


def scaled(table):
    """(feature rows, an untrained colour model, their scaled values, observed mask)."""
    d, _ = table
    model = colour_model(load_scaling(d / "scaling.json"))
    feats = pq.read_table(d / "f.parquet").to_pandas()
    z, observed = model.scale_features(torch.from_numpy(feats[C.FEATURES].to_numpy(np.float32, copy=True)))
    return feats, model, z, observed


def test_model_colours_equal_the_magnitude_differences(table):
    feats, model, z, observed = scaled(table)
    c, seen = model.colours(z, observed)
    physical = c * model.colour_scale + model.colour_center
    for k, (a, b) in enumerate(C.COLOUR_PAIRS):
        expect = feats[a].to_numpy(np.float64) - feats[b].to_numpy(np.float64)
        assert (seen[:, k].numpy() == np.isfinite(expect)).all(), C.COLOURS[k]
        ok = np.isfinite(expect)
        np.testing.assert_allclose(physical[ok, k].numpy(), expect[ok], atol=2e-5)


def test_a_hidden_or_missing_magnitude_hides_its_colours_and_nothing_else(table):
    _, model, z, observed = scaled(table)
    visible = observed.clone()
    visible[:, INDEX["tmass_h"]] = False  # masked, as training's policy or a prediction mode does
    _, seen = model.colours(z, visible)
    touching = [k for k, (a, b) in enumerate(C.COLOUR_PAIRS) if "tmass_h" in (a, b)]
    assert [C.COLOURS[k] for k in touching] == ["tmass_j-tmass_h", "tmass_h-tmass_ks"]
    assert not seen[:, touching].any()
    _, seen_all = model.colours(z, observed)
    others = [k for k in range(len(C.COLOURS)) if k not in touching]
    assert torch.equal(seen[:, others], seen_all[:, others])
    missing_j = ~observed[:, INDEX["tmass_j"]]  # sentinels in the fake: J missing for ~10 %
    assert missing_j.any() and not seen_all[missing_j, C.COLOURS.index("phot_g_mean_mag-tmass_j")].any()
    # and the hidden magnitude's value cannot leak through a colour into the predictions
    z2 = z.clone()
    z2[:, INDEX["tmass_h"]] += 3.0
    with torch.no_grad():
        assert torch.equal(model(z, visible)[1], model(z2, visible)[1])


def test_training_masking_hides_colours_through_the_policy(table):
    d, _ = table
    model = colour_model(load_scaling(d / "scaling.json"))
    x = validation_set(d / "f.parquet", 400, 0).tensors[0]
    z, observed = model.scale_features(x)
    torch.manual_seed(1)
    visible = masking_policy(0.9, 0.6).sample(observed)
    _, inputs_visible = model.inputs(z, visible)
    n = len(C.FEATURES)
    for k, (a, b) in enumerate(C.COLOUR_PAIRS):
        assert torch.equal(inputs_visible[:, n + k], visible[:, INDEX[a]] & visible[:, INDEX[b]])
    assert not inputs_visible[:, n + C.COLOURS.index("tmass_j-tmass_h")].all()  # p_other hides J or H


def test_archive_partitions_and_predictions_go_through_the_same_colour_code(table, tmp_path):
    """A targets / archive raw partition (Parquet, here without XP errors) -> steps.build_partition ->
    scaling with colours -> the ensemble's catalogue with and without XP, colours kept visible."""
    from specfm.stars.features import merge_scaling
    from specfm.stars.predict import predict_catalogue, read_predictions
    from specfm.stars.steps import build_partition
    from specfm.train import save_final

    d, _ = table
    raw = fake_raw(300, seed=9, first_id=7 * 10**15)  # no *_err columns: an XP source without errors
    raw.to_parquet(tmp_path / "cone.parquet")
    build_partition("targets", [str(tmp_path / "cone.parquet")], tmp_path / "t.parquet",
                    tmp_path / "t.npz", healpix_level=5, chunk_rows=100, seed=1, reservoir=1000)
    merge_scaling([tmp_path / "t.npz"], tmp_path / "s.json", reservoir=1000)
    assert load_scaling(tmp_path / "s.json")["tmass_j-tmass_h"]["n"] > 0
    assert pq.read_table(tmp_path / "t.parquet", columns=C.XP_ERR).to_pandas().isna().all().all()
    scaling = load_scaling(d / "scaling.json")
    model = colour_model(scaling)
    save_final(model, tmp_path / "m.pt", metadata={"arch": {**TINY_ARCH, "colours": True},
                                                   "scaling": scaling, "stage": "finetune"})
    predict_catalogue(tmp_path / "t.parquet", [tmp_path / "m.pt"], tmp_path / "p.parquet")
    pred = read_predictions(tmp_path / "p.parquet")
    assert np.isfinite(pred["teff_p50"]).all() and np.isfinite(pred["teff_p50_noxp"]).all()


def test_colours_need_colour_statistics_in_the_scaling():
    scaling = {c: {"median": 0.0, "iqr": 1.0} for c in C.FEATURES + C.LABELS}
    build_model(TINY_ARCH, scaling)  # without colours an old scaling file still serves
    with pytest.raises(ValueError, match="colour statistics"):
        build_model({**TINY_ARCH, "colours": True}, scaling)


# --- XP errors ---

def test_canonical_errors_match_the_scatter_of_refits_of_noisy_spectra():
    """Monte Carlo: refit 300 noise draws of one star's flux; the std of its canonical
    coefficients is what `fit_coefficients(errors=True)` says, where the feature is well above
    its error (within 15 %, the sampling error of a std from 300 draws is 4 %)."""
    from test_stars_xp import well_determined

    rng = np.random.default_rng(2)
    design = xp.gaiaxpy_design()
    truth, _, _ = well_determined(design, rng, 1)
    flux = xp.coefficients_to_flux(truth, design)[0]
    error = 0.01 * np.abs(flux) + 0.002 * np.abs(flux).max()
    draws = flux + error * rng.normal(size=(300, flux.size))
    fits = xp.fit_coefficients(draws, np.broadcast_to(error, draws.shape), design=design, errors=True)
    scatter = xp.canonical_coefficients(fits.coefficients).std(axis=0)
    predicted = fits.canonical_error.mean(axis=0)
    np.testing.assert_allclose(fits.canonical_error, np.broadcast_to(predicted, fits.canonical_error.shape),
                               rtol=1e-6)  # the same errors for every draw: they depend on flux_error only
    strong = np.abs(xp.canonical_coefficients(truth)[0]) > 3 * predicted
    assert strong.sum() > 30
    np.testing.assert_allclose(scatter[strong], predicted[strong], rtol=0.15)
    raw_diag = np.abs(fits.coefficients).std(axis=0)  # the coefficients' own scatter: far larger
    assert np.median(raw_diag / predicted) > 3


def test_feature_errors_are_the_raw_ones_over_the_g_flux_and_optional():
    raw = with_errors(fake_raw(50, seed=3))
    feats, _ = features_from_raw(raw)
    g_flux = 10 ** (-0.4 * (raw["phot_g_mean_mag"].to_numpy() - 25.6874))
    expect = raw[C.XP_ERR].to_numpy() / g_flux[:, None]
    np.testing.assert_allclose(feats[C.XP_ERR].to_numpy(np.float64), expect, rtol=1e-6)
    plain, _ = features_from_raw(fake_raw(50, seed=3))  # an archive partition without errors
    assert plain[C.XP_ERR].isna().all().all()
    with pytest.raises(FeatureError, match="55 of the 110 XP error columns"):
        features_from_raw(raw.drop(columns=C.XP_ERR[55:]), "part.parquet")


def test_xp_noise_has_the_size_of_the_errors_and_touches_only_xp():
    torch.manual_seed(0)
    n = 20000
    x = torch.randn(n, len(C.FEATURES))
    err = torch.rand(n, len(C.XP)) + 0.5
    x[:5, [INDEX[c] for c in C.XP]] = float("nan")  # no XP: stays missing
    noisy = xp_noise(x, err, 2.0)
    xp_cols = [INDEX[c] for c in C.XP]
    other = [i for i in range(len(C.FEATURES)) if i not in xp_cols]
    assert torch.equal(noisy[:, other], x[:, other])
    assert noisy[:5, xp_cols].isnan().all()
    pulls = ((noisy - x)[5:, xp_cols] / (2.0 * err[5:])).flatten()
    assert abs(float(pulls.std()) - 1) < 0.01 and abs(float(pulls.mean())) < 0.01
    err[7, 3] = float("nan")  # XP present, error unknown: refuse, never a silent noise-free row
    with pytest.raises(ValueError, match="1 training rows have XP coefficients but no XP errors"):
        xp_noise(x, err, 2.0)


def test_noise_only_in_training_mode(table):
    d, _ = table
    model = build_model(TINY_ARCH, load_scaling(d / "scaling.json"))
    stream = training_stream(d / "f.parquet", buffer_rows=256, seed=0, xp_errors=True)
    batch = next(iter(stream.batches(0, 64)))
    assert len(batch) == 3 and batch[2].shape == (64, len(C.XP))
    loss = make_loss("finetune", masking_policy(0.0, 0.0), noise=5.0)
    model.eval()
    torch.manual_seed(3)
    a = loss(model, batch)
    torch.manual_seed(3)
    assert torch.equal(a, make_loss("finetune", masking_policy(0.0, 0.0))(model, batch))


def test_noise_enters_the_input_and_the_reconstruction_target_stays_measured(table):
    from specfm.stars.model import pinball_loss, reconstruction_loss

    d, _ = table
    model = build_model(TINY_ARCH, load_scaling(d / "scaling.json")).train()  # dropout 0
    x, y, err = next(iter(training_stream(d / "f.parquet", buffer_rows=256, seed=0,
                                          xp_errors=True).batches(0, 64)))
    policy = masking_policy(0.5, 0.2)
    torch.manual_seed(3)
    got = make_loss("finetune", policy, noise=5.0)(model, (x, y, err))
    torch.manual_seed(3)  # by hand, the same draws in the same order: noise, then the mask
    z_noisy = model.scale_features(xp_noise(x, err, 5.0))[0]
    z, observed = model.scale_features(x)
    recon, q = model(z_noisy, policy.sample(observed))
    expect = 0.8 * pinball_loss(q, model.scale_labels(y)) + 0.2 * reconstruction_loss(recon, z, observed)
    assert torch.equal(got, expect)


def test_xp_noise_refuses_a_table_without_error_columns(table, tmp_path):
    d, _ = table
    plain = pq.read_table(d / "f.parquet").drop(C.XP_ERR)
    pq.write_table(plain, tmp_path / "old.parquet")
    require_xp_errors(d / "f.parquet")
    with pytest.raises(ValueError, match="no XP error columns"):
        require_xp_errors(tmp_path / "old.parquet")


def test_training_with_noise_and_colours_resumes_exactly_after_sigterm(table, tmp_path):
    """The noise comes from the checkpointed RNG: a run killed mid-epoch ends bit-identical."""
    from specfm.train import Preempted, fit

    d, _ = table

    def run(ckdir, kill_at=None):
        torch.manual_seed(0)
        model = build_model({**TINY_ARCH, "colours": True}, load_scaling(d / "scaling.json"))
        stream = training_stream(d / "f.parquet", buffer_rows=512, seed=4, xp_errors=True)
        loss_fn = sigterm_at(make_loss("finetune", masking_policy(0.5, 0.2), noise=1.0), kill_at)
        fit(model, loss_fn, stream, validation_set(d / "f.parquet", 150, 4),
            optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), max_epochs=2, patience=None,
            checkpoint_dir=ckdir, seed=4, batch_size=128, device="cpu", progress=False)
        return model

    straight = run(tmp_path / "a")
    with pytest.raises(Preempted):
        run(tmp_path / "b", kill_at=13)  # epoch 1 (10 steps per epoch), mid-epoch
    resumed = run(tmp_path / "b")
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
