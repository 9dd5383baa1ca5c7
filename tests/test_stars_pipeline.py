"""stars: feature tables, the Parquet stream, the MSA model and losses, the ensemble, a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from stars_fakes import fake_raw, sigterm_at

from specfm.stars import columns as C
from specfm.stars.evaluate import joined_test, metrics, scores
from specfm.stars.features import Reservoir, build_features, split_of
from specfm.stars.model import MaskedStellarAutoencoder, MSAConfig, pinball_loss
from specfm.stars.predict import combine, predict_catalogue, read_predictions
from specfm.stars.training import masking_policy, train_stage
from specfm.stars.xp import canonical_coefficients
from specfm.train import ParquetBatchStream, arrays_from_columns

TINY_ARCH = dict(d_embedding=4, n_frequencies=4, frequency_scale=0.1, widths=[32, 32, 16, 16],
                 latent=8, dropout=0.0, head_width=16, head_layers=3)
TINY_TRAIN = dict(epochs=2, patience=2, batch_size=128, lr=2e-3, weight_decay=1e-4, p_xp=0.9,
                  p_other=0.6, buffer_rows=1024, val_rows=500)


def chunks_of(df, size):
    return [(f"chunk{i}", df.iloc[i:i + size]) for i in range(0, len(df), size)]


@pytest.fixture(scope="module")
def feature_table(tmp_path_factory):
    d = tmp_path_factory.mktemp("stars")
    raw = fake_raw(3000, seed=1)
    counts = build_features(chunks_of(raw, 700), d / "f.parquet", d / "scaling.json", seed=3,
                            reservoir=10**6)
    return d, raw, counts


def test_features_convert_sentinels_scale_xp_and_account_for_rows(feature_table):
    d, raw, counts = feature_table
    table = pd.read_parquet(d / "f.parquet")
    assert counts["rows_in"] == counts["rows_out"] == len(raw) == len(table)
    sentinel = raw["tmass_j"] == -9999.0
    assert sentinel.any() and table.loc[sentinel.to_numpy(), "tmass_j"].isna().all()
    assert not table.loc[~sentinel.to_numpy(), "tmass_j"].isna().any()
    # XP in canonical form divided by the G-band flux in e-/s (DR3 zero point 25.6874)
    row = raw.dropna(subset=["bp_0"]).iloc[0]
    got = table.set_index("source_id").loc[row["source_id"], C.XP].to_numpy(np.float64)
    want = canonical_coefficients(row[C.XP].to_numpy(np.float64)[None])[0]
    np.testing.assert_allclose(got, want / 10 ** (-0.4 * (row["phot_g_mean_mag"] - 25.6874)),
                               rtol=1e-5, atol=1e-6 * np.abs(got).max())
    assert (table["has_xp"] == raw["bp_0"].notna().to_numpy()).all()
    assert table["has_skymapper"].sum() == 0 and table["sm_u"].isna().all()  # missing, never zero
    assert table["age"].isna().all()


def test_split_is_a_stable_function_of_source_id():
    ids = np.arange(1, 20001, dtype=np.int64) * 1_000_003
    s = split_of(ids)
    assert (split_of(ids[::-1])[::-1] == s).all()
    frac = {k: np.mean(s == k) for k in ("train", "val", "test")}
    assert abs(frac["train"] - 0.8) < 0.015 and abs(frac["val"] - 0.1) < 0.01
    assert split_of(np.array([ids[5]]))[0] == s[5]


def test_duplicates_across_chunks_and_missing_ids_are_dropped_and_counted(tmp_path):
    raw = fake_raw(300, seed=2)
    dup = raw.iloc[:20].copy()
    bad = raw.iloc[20:25].copy()
    bad["source_id"] = np.nan
    chunks = [("a", raw), ("b", pd.concat([dup, bad]))]
    counts = build_features(chunks, tmp_path / "f.parquet", tmp_path / "s.json", seed=0, reservoir=1000)
    assert counts["dropped_duplicate_source_id"] == 20 and counts["dropped_no_source_id"] == 5
    assert counts["rows_out"] == 300 == pq.read_metadata(tmp_path / "f.parquet").num_rows


def test_scaling_statistics_come_from_the_training_split(feature_table):
    d, raw, _ = feature_table
    stats = json.loads((d / "scaling.json").read_text())["columns"]
    table = pd.read_parquet(d / "f.parquet")
    train = table.loc[table["split"] == "train", "teff"].to_numpy(np.float64)
    q25, q50, q75 = np.quantile(train, [0.25, 0.5, 0.75])
    assert stats["teff"]["median"] == pytest.approx(q50) and stats["teff"]["iqr"] == pytest.approx(q75 - q25)
    assert stats["teff"]["n"] == len(train)
    assert stats["age"]["n"] == 0  # no ages: the label counts as untrained downstream


def test_reservoir_estimates_quantiles_from_a_bounded_sample():
    rng = np.random.default_rng(0)
    res = Reservoir(["x"], size=5000, seed=1)
    values = rng.normal(3.0, 2.0, 200_000)
    for i in range(0, values.size, 10_000):
        res.add(pd.DataFrame({"x": values[i:i + 10_000]}))
    assert res.values["x"].size == 5000 and res.seen["x"] == values.size
    st = res.statistics()["x"]
    assert st["median"] == pytest.approx(3.0, abs=0.1)
    assert st["iqr"] == pytest.approx(2.0 * 1.349, rel=0.05)
    # the sample must be spread over the whole stream, not the first 5000 values
    res2 = Reservoir(["x"], size=1000, seed=1)
    for i in range(10):
        res2.add(pd.DataFrame({"x": np.full(1000, float(i))}))
    assert res2.values["x"].mean() > 3.5


def test_stream_visits_each_training_row_once_per_epoch_and_resumes_exactly(feature_table):
    d, _, _ = feature_table
    stream = ParquetBatchStream([d / "f.parquet"], arrays_from_columns([["teff"], ["logg"]]),
                                columns=["teff", "logg", "split"], where=("split", "train"),
                                buffer_rows=600, seed=5)
    table = pd.read_parquet(d / "f.parquet")
    n_train = int((table["split"] == "train").sum())
    assert len(stream) == n_train
    e0 = [b[0] for b in stream.batches(0, 100)]
    assert len(e0) == stream.steps_per_epoch(100)
    seen = torch.cat(e0).numpy().ravel()
    assert np.allclose(np.sort(seen), np.sort(table.loc[table["split"] == "train", "teff"].to_numpy()))
    again = torch.cat([b[0] for b in stream.batches(0, 100)]).numpy().ravel()
    assert (again == seen).all()
    e1 = torch.cat([b[0] for b in stream.batches(1, 100)]).numpy().ravel()
    assert not (e1 == seen).all()
    resumed = [b[0] for b in stream.batches(0, 100, skip=7)]
    assert len(resumed) == len(e0) - 7 and all((a == b).all() for a, b in zip(resumed, e0[7:]))
    # the buffer shuffles across row groups: the first batch mixes rows of several chunks
    first_rows = set(e0[0].numpy().ravel().tolist())
    groups = [set(pq.ParquetFile(d / "f.parquet").read_row_group(g, columns=["teff"]).column(0)
                  .to_numpy().tolist()) for g in range(2)]
    assert first_rows - groups[0] and first_rows - groups[1]


def tiny_model():
    f, n = len(C.FEATURES), len(C.LABELS)
    cfg = MSAConfig(n_features=f, n_labels=n, **{**TINY_ARCH, "widths": tuple(TINY_ARCH["widths"])})
    return MaskedStellarAutoencoder(cfg, np.zeros(f), np.ones(f), np.zeros(n), np.ones(n)).eval()


def test_model_shapes_ordered_quantiles_and_hidden_values_have_no_influence():
    torch.manual_seed(0)
    model = tiny_model()
    x = torch.randn(5, len(C.FEATURES))
    x[0, :10] = float("nan")
    z, observed = model.scale_features(x)
    assert not observed[0, :10].any() and (z[0, :10] == 0).all()
    recon, q = model(z, observed)
    assert recon.shape == (5, len(C.FEATURES)) and q.shape == (5, len(C.LABELS), 3)
    assert (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()
    hidden = observed.clone()
    hidden[:, 3] = False
    z2 = z.clone()
    z2[:, 3] = 123.0  # a hidden value must not leak into the output
    assert torch.allclose(model(z, hidden)[1], model(z2, hidden)[1])
    assert not torch.allclose(model(z, observed)[1], model(z2, observed)[1])


def test_masking_policy_hides_xp_as_a_group_and_never_core_features():
    torch.manual_seed(1)
    policy = masking_policy(0.9, 0.6)
    observed = torch.ones(4000, len(C.FEATURES), dtype=torch.bool)
    visible = policy.sample(observed)
    idx = {c: i for i, c in enumerate(C.FEATURES)}
    xp = visible[:, [idx[c] for c in C.XP]]
    assert ((xp.all(1)) | (~xp.any(1))).all()  # all or nothing per star
    assert (~xp.any(1)).float().mean() == pytest.approx(0.9, abs=0.02)
    assert visible[:, [idx[c] for c in C.CORE_FEATURES]].all()
    assert (~visible[:, idx["tmass_j"]]).float().mean() == pytest.approx(0.6, abs=0.03)
    missing = observed.clone()
    missing[:, idx["w1"]] = False
    assert not policy.sample(missing)[:, idx["w1"]].any()  # never shows what is not there


def test_pinball_loss_by_hand_and_missing_labels_ignored():
    q = torch.tensor([[[0.0, 1.0, 2.0]]])
    y = torch.tensor([[3.0]])
    # residual y - q = (3, 2, 1); tau (0.16, 0.5, 0.84): losses 0.48, 1.0, 0.84 -> mean 0.7733
    assert pinball_loss(q, y).item() == pytest.approx((0.48 + 1.0 + 0.84) / 3)
    q2 = torch.cat([q, torch.full((1, 1, 3), 100.0)])
    y2 = torch.tensor([[3.0], [float("nan")]])
    assert pinball_loss(q2, y2).item() == pytest.approx(pinball_loss(q, y).item())


def test_ensemble_combination_by_hand():
    qs = np.array([[[[9.0, 10.0, 12.0]]], [[[11.0, 12.0, 14.0]]]])  # 2 members, 1 star, 1 label
    c = combine(qs)
    assert c["p50"][0, 0] == 11.0 and c["ens_std"][0, 0] == 1.0
    assert c["p16"][0, 0] == pytest.approx(11 - np.sqrt(1 + 1))
    assert c["p84"][0, 0] == pytest.approx(11 + np.sqrt(4 + 1))


def test_scores_by_hand():
    s = scores(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0]), np.ones(3), np.zeros(3))
    assert s["n"] == 3 and s["mae"] == pytest.approx(4 / 3) and s["bias"] == pytest.approx(4 / 3)
    assert s["rmse"] == pytest.approx(np.sqrt(10 / 3)) and s["r2"] is None
    assert s["zscore_std"] == pytest.approx(np.std([0.0, 1.0, 3.0]))
    assert scores(np.array([np.nan]), np.array([1.0]), np.ones(1), np.ones(1)) == {"n": 0}


def test_tiny_run_learns_teff_uses_xp_and_reports_absent_labels(feature_table, tmp_path):
    d, _, _ = feature_table
    pre = tmp_path / "pre.pt"
    train_stage("pretrain", d / "f.parquet", d / "scaling.json", pre, arch=TINY_ARCH,
                train=TINY_TRAIN, seed=1, progress=False)
    members = []
    for m in range(2):
        members.append(tmp_path / f"m{m}.pt")
        train_stage("finetune", d / "f.parquet", d / "scaling.json", members[-1], arch=TINY_ARCH,
                    train={**TINY_TRAIN, "epochs": 4, "p_xp": 0.5}, seed=10 + m, init=pre, progress=False)
    predict_catalogue(d / "f.parquet", members, tmp_path / "pred.parquet")
    pred = read_predictions(tmp_path / "pred.parquet")
    assert len(pred) == 3000 and pred["source_id"].is_unique
    assert (pred["teff_p16"] <= pred["teff_p50"]).all() and (pred["teff_p50"] <= pred["teff_p84"]).all()
    assert pred["age_p50"].isna().all()  # no age labels: no invented ages
    test = joined_test(pred, d / "f.parquet")
    result = metrics(test)
    teff_std = test["true_teff"].std()
    assert result["with_xp"]["teff"]["mae"] < 0.5 * teff_std  # far better than a constant
    # logg is encoded in the fake XP only: hiding XP must hurt it
    assert result["without_xp"]["logg"]["mae"] > 1.2 * result["with_xp"]["logg"]["mae"]
    assert result["with_xp"]["age"] == {"n": 0, "note": "no predictions: the sample has no training labels"}


def test_seen_ids_finds_every_earlier_id_and_nothing_else():
    from specfm.stars.features import SeenIds

    rng = np.random.default_rng(3)
    seen, truth = SeenIds(), set()
    for _ in range(40):
        ids = rng.integers(0, 10**6, 500)
        expect = np.array([i in truth for i in ids.tolist()])
        assert (seen.contains(ids) == expect).all()
        seen.add(np.unique(ids[~expect]))  # as build_partition does: only new ids
        truth.update(ids.tolist())
    assert len(seen) == len(truth) and len(seen.runs) <= 7  # O(log n) sorted runs


def test_training_from_the_stream_resumes_exactly_after_sigterm(feature_table, tmp_path):
    """A SIGTERM mid-epoch checkpoints; the rerun skips the batches done and ends bit-identical
    (with 2 DataLoader workers decoding the stream, against a run decoding in-process)."""
    from specfm.train import Preempted, fit
    from specfm.stars.features import load_scaling
    from specfm.stars.training import build_model, make_loss, validation_set

    d, _, _ = feature_table
    train = {**TINY_TRAIN, "epochs": 2}

    def run(ckdir, kill_at=None, workers=0):
        torch.manual_seed(0)
        model = build_model(TINY_ARCH, load_scaling(d / "scaling.json"))
        stream = ParquetBatchStream([d / "f.parquet"], arrays_from_columns([C.FEATURES, C.LABELS]),
                                    columns=C.FEATURES + C.LABELS + ["split"], where=("split", "train"),
                                    buffer_rows=train["buffer_rows"], seed=4, workers=workers)
        loss_fn = sigterm_at(make_loss("finetune", masking_policy(0.9, 0.6)), kill_at)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        fit(model, loss_fn, stream, validation_set(d / "f.parquet", 300, 4), optimizer=opt,
            max_epochs=2, patience=None, checkpoint_dir=ckdir, seed=4, batch_size=128, device="cpu",
            progress=False)
        return model

    straight = run(tmp_path / "a")  # decoded in-process
    with pytest.raises(Preempted):  # 2 decoding workers from here on: the batches are the same
        run(tmp_path / "b", kill_at=27, workers=2)  # epoch 1 (19 steps per epoch), mid-epoch
    resumed = run(tmp_path / "b", workers=2)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_truncated_raw_partition_is_named_and_nothing_is_left_behind(tmp_path):
    from specfm.stars.features import FeatureError
    from specfm.stars.steps import build_partition as build_step

    raw = fake_raw(200, seed=4)
    good = tmp_path / "hpx1.parquet"
    raw.to_parquet(good)
    bad = tmp_path / "hpx2.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = tmp_path / "out" / "hpx2.parquet"
    with pytest.raises(FeatureError, match="hpx2.parquet: not a readable Parquet partition"):
        build_step("archive", [str(bad)], out, tmp_path / "out" / "r.npz", healpix_level=5,
                   chunk_rows=100, seed=0, reservoir=100)
    assert not out.exists() and not (tmp_path / "out" / "r.npz").exists()
    counts = build_step("archive", [str(good)], tmp_path / "ok.parquet", tmp_path / "ok.npz",
                        healpix_level=5, chunk_rows=100, seed=0, reservoir=100)
    assert counts["rows_out"] == 200


def test_nan_coefficients_are_missing_values_not_dropped_rows(tmp_path):
    raw = fake_raw(100, seed=5)
    raw.loc[raw.index[:10], "bp_7"] = np.nan
    counts = build_features([("c", raw)], tmp_path / "f.parquet", tmp_path / "s.json", reservoir=100)
    table = pd.read_parquet(tmp_path / "f.parquet")
    assert counts["rows_out"] == 100
    assert table["bp_7"].isna().sum() >= 10 and not table.loc[:9, "has_xp"].any()
    assert table.loc[:9, "bp_8"].notna().sum() == raw.loc[raw.index[:10], "bp_8"].notna().sum()


def test_feature_benchmark_writes_throughput_and_peak_memory_per_size(tmp_path):
    from specfm.stars.bench import bench_features

    out = tmp_path / "bench.json"
    result = bench_features([1000, 3000], out, chunk_rows=500)
    assert json.loads(out.read_text()) == result
    assert [r["rows"] for r in result["runs"]] == [1000, 3000]
    assert all(r["rows_per_second"] > 0 and r["peak_rss_mb"] > 50 for r in result["runs"])


def test_stream_benchmark_reads_every_training_row_per_worker_count(feature_table, tmp_path):
    from specfm.stars.bench import main

    path = feature_table[0] / "f.parquet"
    out = tmp_path / "stream.json"
    main(["stream", "--features", str(path), "--workers", "0", "2", "--epochs", "2", "--batch-size", "64",
          "--out", str(out)])
    result = json.loads(out.read_text())
    n_train = int((pd.read_parquet(path, columns=["split"])["split"] == "train").sum())
    assert result["rows_per_epoch"] == n_train
    assert [r["workers"] for r in result["runs"]] == [0, 2]
    assert all(r["rows"] == 2 * n_train and r["rows_per_second"] > 0 for r in result["runs"])
    p = result["projection"]
    assert p["decode_seconds_per_epoch"] == pytest.approx(
        p["rows"] / (p["rows_per_second_per_worker"] * p["node_workers"]), rel=1e-3)


def write_fake_sfd(map_dir, north: float, south: float) -> None:
    """Two tiny polar ZEA maps in the SFD files' layout, constant per hemisphere."""
    from astropy.io import fits

    from specfm.stars.dust import SFD_FILES

    map_dir.mkdir(parents=True, exist_ok=True)
    for name, value, lat in ((SFD_FILES[0], north, 90.0), (SFD_FILES[1], south, -90.0)):
        hdr = fits.Header({"CTYPE1": "GLON-ZEA", "CTYPE2": "GLAT-ZEA", "CRPIX1": 32.5, "CRPIX2": 32.5,
                           "CRVAL1": 0.0, "CRVAL2": lat, "CDELT1": -4.0, "CDELT2": 4.0,
                           "LONPOLE": 180.0 if lat > 0 else 0.0})
        fits.PrimaryHDU(np.full((64, 64), value, np.float32), hdr).writeto(map_dir / name)


def test_sfd_fills_missing_ebv_by_hemisphere_and_keeps_given_values(tmp_path):
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from specfm.stars.steps import build_partition as build_step

    write_fake_sfd(tmp_path / "sfd", north=0.05, south=0.11)
    raw = fake_raw(300, seed=6)
    raw["ebv"] = np.nan
    raw.loc[raw.index[:5], "ebv"] = 0.9  # a value the partition already has stays
    raw.loc[raw.index[5:8], ["ra", "dec"]] = np.nan  # no position: stays missing
    path = tmp_path / "hpx1.parquet"
    raw.to_parquet(path)
    build_step("archive", [str(path)], tmp_path / "f.parquet", tmp_path / "r.npz", healpix_level=5,
               chunk_rows=100, seed=0, reservoir=100, sfd_dir=tmp_path / "sfd")
    table = pd.read_parquet(tmp_path / "f.parquet").set_index("source_id").loc[raw["source_id"]]
    b = SkyCoord(raw["ra"].to_numpy() * u.deg, raw["dec"].to_numpy() * u.deg).galactic.b.deg
    ebv = table["ebv"].to_numpy()
    assert np.allclose(ebv[:5], 0.9) and np.isnan(ebv[5:8]).all()
    rest = np.arange(8, len(raw))
    assert np.allclose(ebv[rest], np.where(b[rest] >= 0, 0.05, 0.11), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="stars_dust_sfd"):
        build_step("archive", [str(path)], tmp_path / "g.parquet", tmp_path / "g.npz", healpix_level=5,
                   chunk_rows=100, seed=0, reservoir=100, sfd_dir=tmp_path / "nowhere")


def test_rows_per_second_after_a_resume_counts_only_this_processes_epochs():
    from specfm.stars.training import rows_per_second
    from specfm.train import FitResult

    resumed = FitResult(best_val_loss=1.0, best_epoch=4, epochs_run=5, stopped_early=False,
                        resumed_from=(3, 0), steps_run=20)
    fresh = FitResult(best_val_loss=1.0, best_epoch=4, epochs_run=5, stopped_early=False,
                      resumed_from=None, steps_run=50)
    assert rows_per_second(100, resumed, 10.0) == 20.0  # 2 epochs of 100 rows in 10 s
    assert rows_per_second(100, fresh, 10.0) == 50.0


def test_stars_model_records_fingerprint_the_whole_training_package(monkeypatch):
    """train/seeding.py decides initial weights: it must be in the stars model's code digest."""
    from pathlib import Path

    from specfm.provenance import code_digest
    from specfm.stars.steps import MODEL_CODE

    read = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.as_posix()) or original(self))
    code_digest(MODEL_CODE)
    for module in ("train/seeding.py", "train/loop.py", "train/checkpoint.py", "train/stream.py"):
        assert any(p.endswith(module) for p in read), module


def ids_of(table):
    """to_arrays keeping source_id exact (int64): float32 would merge neighbouring ids."""
    return (table.column("source_id").to_numpy(),)


def test_stream_over_2_workers_x_2_ranks_reads_every_training_id_once_per_epoch(feature_table):
    """Ranks simulated in one process (rank_world=); each rank's share decoded by 2 workers."""
    d, _, _ = feature_table
    table = pd.read_parquet(d / "f.parquet", columns=["source_id", "split"])
    train_ids = table.loc[table["split"] == "train", "source_id"].to_numpy()

    def epoch(workers, e=0, skip=0):
        stream = ParquetBatchStream([d / "f.parquet"], ids_of, columns=["source_id", "split"],
                                    where=("split", "train"), buffer_rows=300, seed=5,
                                    workers=workers)
        return stream, [[b[0].numpy() for b in stream.batches(e, 64, skip, rank_world=(r, 2))]
                        for r in (0, 1)]

    stream, (rank0, rank1) = epoch(2)
    assert len(stream.units) >= 4  # several row groups, so the workers share real work
    assert len(rank0) == len(rank1) == stream.steps_per_epoch(64, world=2)  # DDP needs equal
    read = np.concatenate(rank0 + rank1)
    assert len(read) == len(train_ids) and len(np.unique(read)) == len(read)  # once, none twice
    assert set(read.tolist()) == set(train_ids.tolist())
    assert abs(sum(map(len, rank0)) - sum(map(len, rank1))) <= 1
    _, (in_process0, in_process1) = epoch(0)  # the worker count does not change the batches
    assert all((a == b).all() for a, b in zip(rank0 + rank1, in_process0 + in_process1))
    _, (resumed0, _) = epoch(2, skip=5)
    assert len(resumed0) == len(rank0) - 5 and all((a == b).all() for a, b in zip(resumed0, rank0[5:]))
    _, (next0, next1) = epoch(2, e=1)
    assert not (np.concatenate(next0 + next1) == read).all()  # a new order every epoch
    assert set(np.concatenate(next0 + next1).tolist()) == set(train_ids.tolist())


def test_stream_plan_by_hand(tmp_path):
    """23 rows in row groups of 5, 3 of them val: 20 training rows. 2 ranks x batch 3: 20 = 3 full
    rounds of 2 x 3 and 2 rows, one for each rank's 4th batch. 7 rows, 2 ranks x batch 3: the
    last round has 1 row < 2 ranks, so it joins the round before: batches of 4 and 3."""
    ids = np.arange(23, dtype=np.int64)
    split = np.where(np.isin(ids, [4, 11, 17]), "val", "train")
    pd.DataFrame({"source_id": ids, "split": split}).to_parquet(tmp_path / "t.parquet",
                                                                row_group_size=5)
    stream = ParquetBatchStream([tmp_path / "t.parquet"], ids_of, columns=["source_id", "split"],
                                where=("split", "train"), buffer_rows=4, seed=1)
    assert [n for *_, n in stream.units] == [4, 5, 4, 4, 3] and stream.n_rows == 20
    assert stream.share(0, 2) == (0, 10) and stream.share(1, 2) == (10, 20)
    assert stream.steps_per_epoch(3, world=2) == 4 and stream.steps_per_epoch(3, world=1) == 7
    sizes = [[len(b[0]) for b in stream.batches(0, 3, rank_world=(r, 2))] for r in (0, 1)]
    assert sizes == [[3, 3, 3, 1], [3, 3, 3, 1]]
    # the pieces of the two ranks tile the epoch's unit sequence, cut at row 10
    p0, p1 = stream.pieces(0, 0, 2), stream.pieces(0, 1, 2)
    assert sum(b - a for _, a, b in p0) == sum(b - a for _, a, b in p1) == 10
    if p0[-1][0] == p1[0][0]:  # a row group split between the ranks: complementary rows
        assert p0[-1][2] == p1[0][1]
    small = pd.DataFrame({"source_id": ids[:7], "split": "train"})
    small.to_parquet(tmp_path / "s.parquet", row_group_size=5)
    s7 = ParquetBatchStream([tmp_path / "s.parquet"], ids_of, columns=["source_id", "split"],
                            where=("split", "train"), seed=1)
    assert s7.steps_per_epoch(3, world=2) == 1
    assert [[len(b[0]) for b in s7.batches(0, 3, rank_world=(r, 2))] for r in (0, 1)] == [[4], [3]]
    with pytest.raises(ValueError, match="7 training rows cannot be shared by 8 ranks"):
        s7.steps_per_epoch(3, world=8)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        ParquetBatchStream([tmp_path / "s.parquet"], ids_of, columns=["source_id"], workers=-1)


def test_stream_batches_in_pinned_memory_equal_the_plain_ones(feature_table):
    d, _, _ = feature_table
    if not torch.cuda.is_available():
        pytest.skip("pinned memory needs CUDA")
    stream = ParquetBatchStream([d / "f.parquet"], ids_of, columns=["source_id", "split"],
                                where=("split", "train"), buffer_rows=300, seed=5)
    plain = list(stream.batches(0, 64))
    pinned = list(stream.batches(0, 64, pin_memory=True))
    assert all(p[0].is_pinned() and torch.equal(p[0], q[0]) for p, q in zip(pinned, plain))
