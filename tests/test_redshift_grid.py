"""Arm merging / resampling, normalisation and the TARGETID-hash split, on hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from specfm.redshift import grid as G


def test_make_grid_paper_size():
    assert G.make_grid(3600.0, 9824.0, 0.8).size == 7781  # the paper's 7,781 pixels


def test_overlap_matrix_two_to_one():
    w = G.overlap_matrix(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 3.5])).toarray()
    assert np.allclose(w, [[1, 1, 0, 0], [0, 0, 1, 1]])


def test_merge_equal_arms_doubles_ivar_and_averages():
    wave = np.arange(10.0)
    m = G.Merger([wave, wave], wave)
    f, iv = m([np.full((1, 10), 1.0), np.full((1, 10), 3.0)], [np.full((1, 10), 4.0), np.full((1, 10), 4.0)])
    assert np.allclose(f, 2.0) and np.allclose(iv, 8.0)


def test_merge_weights_by_inverse_variance():
    wave = np.arange(5.0)
    m = G.Merger([wave, wave], wave)
    f, iv = m([np.full((1, 5), 1.0), np.full((1, 5), 4.0)], [np.full((1, 5), 1.0), np.full((1, 5), 2.0)])
    assert np.allclose(f, (1 * 1 + 4 * 2) / 3) and np.allclose(iv, 3.0)


def test_coarser_grid_averages_pairs_and_ivar_adds():
    m = G.Merger([np.arange(8.0)], np.array([0.5, 2.5, 4.5, 6.5]))
    flux = np.arange(8.0)[None, :]
    f, iv = m([flux], [np.ones((1, 8))])
    assert np.allclose(f, [0.5, 2.5, 4.5, 6.5]) and np.allclose(iv, 2.0)


def test_masked_pixel_drops_out_and_uncovered_pixel_is_masked():
    m = G.Merger([np.arange(4.0), np.arange(6.0, 10.0)], np.arange(10.0))
    iv = [np.ones((1, 4)), np.ones((1, 4))]
    iv[0][0, 1] = 0.0
    f, ivar = m([np.full((1, 4), 2.0), np.full((1, 4), 5.0)], iv)
    assert ivar[0, 1] == 0 and np.all(ivar[0, 4:6] == 0)  # masked input; the gap between the arms
    assert np.allclose(f[0, [0, 2, 3]], 2.0) and np.allclose(f[0, 6:], 5.0)


def test_grid_outside_the_arms_is_a_named_error():
    with pytest.raises(ValueError, match="coadd-x.fits: arms cover .* does not cover"):
        G.Merger([np.arange(3600.0, 5000.0)], G.make_grid(3600, 9824, 2.0), name="coadd-x.fits")


def test_median_normalise_and_unusable_spectra():
    flux = np.array([[1.0, 2.0, 3.0, 100.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    ivar = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    f, iv, med = G.median_normalise(flux, ivar)
    assert med[0] == 2.0 and np.allclose(f[0], [0.5, 1.0, 1.5, 0.0]) and np.allclose(iv[0, :3], 4.0)
    assert np.isnan(med[1]) and np.isnan(med[2])  # median 0; all masked


def test_hash_split_is_stable_and_near_70_15_15():
    ids = np.arange(20000) + 39627000000000000
    u = G.hash_unit(ids)
    assert np.array_equal(u, G.hash_unit(ids[::-1])[::-1])  # order-independent
    split = G.split_of(u)
    frac = {s: np.mean(split == s) for s in G.SPLITS}
    assert abs(frac["train"] - 0.70) < 0.02 and abs(frac["test"] - 0.15) < 0.01
    part = G.fold_part(u, 5)
    assert np.all((part == -1) == (split == "test"))
    counts = np.bincount(part[part >= 0])
    assert counts.size == 5 and counts.min() > 0.9 * counts.mean()
