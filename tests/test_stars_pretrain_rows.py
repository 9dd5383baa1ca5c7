"""stars: pretraining on every split's features (stars.pretrain.all_splits), never fine-tuning."""

from __future__ import annotations

import pandas as pd
import pytest
from stars_fakes import fake_raw

from specfm.stars.features import build_features
from specfm.stars.training import train_stage, training_stream


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("rows")
    build_features([("chunk0", fake_raw(1500, seed=6))], d / "f.parquet", d / "scaling.json", seed=3,
                   reservoir=10**6)
    return d


def test_all_splits_streams_every_row_and_the_default_only_the_training_split(table):
    split = pd.read_parquet(table / "f.parquet", columns=["split"])["split"]
    assert 0 < (split == "train").sum() < len(split)
    assert len(training_stream(table / "f.parquet", buffer_rows=256, seed=0)) == (split == "train").sum()
    assert len(training_stream(table / "f.parquet", buffer_rows=256, seed=0, all_splits=True)) == len(split)


def test_fine_tuning_refuses_the_held_out_splits(table, tmp_path):
    arch = dict(d_embedding=2, n_frequencies=2, widths=[8], latent=4, head_width=8, head_layers=2)
    train = dict(epochs=1, patience=1, batch_size=64, lr=1e-3, weight_decay=0.0, p_xp=0.5, p_other=0.5,
                 buffer_rows=256, val_rows=100, all_splits=True)
    with pytest.raises(ValueError, match="pretraining only"):
        train_stage("finetune", table / "f.parquet", table / "scaling.json", tmp_path / "m.pt", arch=arch,
                    train=train, seed=0, progress=False)
    assert not (tmp_path / "m.pt").exists()
