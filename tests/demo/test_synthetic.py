"""Synthetic phantom and its imaging models: determinism, shapes, physics sanity, learnability."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from labelfree_jax.core.errors import InputError
from labelfree_jax.demo import synthetic as S

SHAPE = (32, 128, 128)


@pytest.fixture(scope="module")
def scene():
    phantom = S.make_cell_phantom(SHAPE, seed=3)
    bf_clean = S.brightfield_from_phantom(phantom.ri, photons=0)
    bf = S.brightfield_from_phantom(phantom.ri, seed=1)
    fl = S.fluorescence_from_phantom(phantom.dna, seed=2)
    return phantom, bf_clean, bf, fl


def test_same_seed_identical_and_different_seeds_differ():
    a = S.make_pair_set(2, (16, 64, 64), seed=5)
    b = S.make_pair_set(2, (16, 64, 64), seed=5)
    c = S.make_pair_set(2, (16, 64, 64), seed=6)
    for (sa, ta), (sb, tb) in zip(a, b):
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_array_equal(ta, tb)
    # the two volumes of one set differ, and another seed gives other volumes
    assert not np.array_equal(a[0][1], a[1][1])
    assert not np.array_equal(a[0][0], c[0][0])
    assert not np.array_equal(a[0][1], c[0][1])
    # volume i depends only on (seed, i): a prefix of a longer set
    longer = S.make_pair_set(3, (16, 64, 64), seed=5)
    np.testing.assert_array_equal(longer[1][0], a[1][0])


def test_shapes_dtypes_and_value_ranges():
    pairs = S.make_pair_set(2, (16, 48, 64), seed=0)
    assert len(pairs) == 2
    for signal, target in pairs:
        assert signal.shape == target.shape == (1, 16, 48, 64)
        assert signal.dtype == target.dtype == np.float32
        assert np.all(np.isfinite(signal)) and np.all(np.isfinite(target))
        # bright-field in empty-field units: about 1 with a few % contrast
        assert 0.9 < float(np.median(signal)) < 1.1
        # fluorescence in photons: background 20 outside, much brighter in nuclei
        assert 15 < float(np.median(target)) < 30
        assert float(target.max()) > 100


def test_phantom_structure(scene):
    phantom, *_ = scene
    assert phantom.shape == SHAPE
    assert phantom.pixel_sizes == {"z": 0.29, "y": 0.29, "x": 0.29}
    assert phantom.n_cells >= 3
    labels = phantom.cell_labels
    assert labels.dtype == np.int32 and labels.shape == SHAPE
    # nuclei lie inside cells, nucleoli inside nuclei
    assert np.all(labels[phantom.nucleus_mask] > 0)
    assert np.all(phantom.nucleus_mask[phantom.nucleolus_mask])
    assert phantom.nucleolus_mask.any()
    # refractive indices: medium far outside cells, nucleoli the densest
    outside = ~ndi.binary_dilation(labels > 0, iterations=3)
    np.testing.assert_allclose(phantom.ri[outside], S.N_MEDIUM, atol=1e-5)
    inner_nucleoli = ndi.binary_erosion(phantom.nucleolus_mask)
    cyto = (labels > 0) & ~ndi.binary_dilation(phantom.nucleus_mask, iterations=2)
    assert phantom.ri[inner_nucleoli].mean() > phantom.ri[phantom.nucleus_mask].mean() > phantom.ri[cyto].mean()
    assert phantom.ri[cyto].mean() > S.N_MEDIUM + 0.005
    # DNA: zero outside nuclei (up to the anti-aliasing blur), low in nucleoli
    far = ~ndi.binary_dilation(phantom.nucleus_mask, iterations=3)
    assert float(np.abs(phantom.dna[far]).max()) < 1e-3
    inner_nuc = ndi.binary_erosion(phantom.nucleus_mask, iterations=2) & ~ndi.binary_dilation(
        phantom.nucleolus_mask, iterations=2)
    assert phantom.dna[inner_nucleoli].mean() < 0.5 * phantom.dna[inner_nuc].mean()


def test_n_cells_and_pixel_size_arguments():
    p = S.make_cell_phantom((8, 64, 64), n_cells=2, seed=0, pixel_size_um=(0.5, 0.4, 0.4))
    assert 1 <= p.n_cells <= 2
    assert p.pixel_size_um == (0.5, 0.4, 0.4)
    with pytest.raises(InputError, match="shape"):
        S.make_cell_phantom((8, 8, 64))
    with pytest.raises(InputError, match="pixel_size_um"):
        S.make_cell_phantom((8, 64, 64), pixel_size_um=(0.3, -1, 0.3))
    with pytest.raises(InputError, match="n_cells"):
        S.make_cell_phantom((8, 64, 64), n_cells=0)
    with pytest.raises(InputError, match="seed"):
        S.make_pair_set(1, (8, 64, 64), seed=-1)


def test_fluorescence_brighter_inside_nuclei(scene):
    phantom, _, _, fl = scene
    nuc = phantom.nucleus_mask
    far = ~ndi.binary_dilation(nuc, iterations=4)
    inside = ndi.binary_erosion(nuc, iterations=2)
    assert fl[inside].mean() > 5 * fl[far].mean()
    # outside nuclei it is the background (20 photons) plus noise
    assert abs(float(fl[far].mean()) - 20.0) < 1.0


def test_fluorescence_matches_the_model_without_blur():
    """No PSF: the expected counts are photons * dna + background; the noise is Poisson + read."""
    dna = np.zeros((4, 32, 32))
    dna[:, 8:24, 8:24] = 1.0
    fl = S.fluorescence_from_phantom(dna, psf_sigma_um=(0, 0, 0), photons=400.0, background=10.0,
                                     read_noise=2.0, seed=0)
    inside, outside = fl[dna > 0], fl[dna == 0]
    assert abs(inside.mean() - 410.0) < 3 * math.sqrt(410 / inside.size) + 0.5
    assert abs(outside.mean() - 10.0) < 0.5
    # variance = Poisson mean + read variance
    assert abs(outside.var() / (10.0 + 4.0) - 1) < 0.15
    assert abs(inside.var() / (410.0 + 4.0) - 1) < 0.15


def test_fluorescence_noise_variance_is_the_mean_noise_variance():
    """The mean noise variance the demo uses for C_max: mean counts + read noise squared."""
    dna = np.zeros((8, 96, 96))
    dna[:, 24:72, 24:72] = 1.0
    fl = S.fluorescence_from_phantom(dna, psf_sigma_um=(0, 0, 0), photons=400.0, background=10.0,
                                     read_noise=2.0, seed=1)
    measured = float(np.var(fl - (400.0 * dna + 10.0)))  # the noise itself (the clean image is known)
    # 0.25 * 410 + 0.75 * 10 + 2**2 = 114 photons^2 in expectation; the variance of the noise itself scatters by ~1 %
    assert abs(S.fluorescence_noise_variance(fl, read_noise=2.0) - 114.0) < 1.0
    assert abs(S.fluorescence_noise_variance(fl, read_noise=2.0) / measured - 1) < 0.04


def test_brightfield_empty_field_and_weak_phase_limit():
    """Empty medium -> intensity 1; a weak phase object follows the transport-of-intensity law."""
    ps = (0.29, 0.29, 0.29)
    flat = S.brightfield_from_phantom(np.full((3, 32, 32), S.N_MEDIUM), photons=0)
    np.testing.assert_allclose(flat, 1.0, atol=1e-6)
    # in focus, a pure phase object with no absorption is nearly invisible
    y, x = np.mgrid[:64, :64]
    bump = 0.002 * np.exp(-((y - 32) ** 2 + (x - 32) ** 2) / (2 * 4.0**2))
    ri = np.repeat((S.N_MEDIUM + bump)[None], 15, axis=0)  # thick: the middle section is complete
    in_focus = S.brightfield_from_phantom(ri, defocus_um=0.0, absorption=0.0, photons=0, na=1.5)
    assert np.abs(in_focus - 1).max() < 1e-3
    # defocused: I ~ 1 - dz * lambda_m / (2 pi) * laplacian(phi) (weak phase, within the pupil)
    dz, lam = 1.0, 0.55
    img = S.brightfield_from_phantom(ri, defocus_um=dz, absorption=0.0, photons=0, na=1.5, section_um=1.0)
    phi = 2 * np.pi / lam * 1.0 * bump
    lap = ndi.laplace(phi) / ps[1] ** 2
    expected = 1 - dz * (lam / S.N_MEDIUM) / (2 * np.pi) * lap
    centre = img[7]
    contrast = expected - 1
    assert np.abs(contrast).max() > 1e-3  # the object is visible
    np.testing.assert_allclose(centre - 1, contrast, atol=0.03 * np.abs(contrast).max())


def test_brightfield_noise_level():
    img = S.brightfield_from_phantom(np.full((4, 32, 32), S.N_MEDIUM), photons=1000.0, read_noise=10.0, seed=0)
    # variance of counts / photons: (photons + read^2) / photons^2
    assert abs(img.var() / ((1000 + 100) / 1000**2) - 1) < 0.1
    assert abs(img.mean() - 1) < 0.002


def test_brightfield_shows_nucleus_edges_but_is_not_the_fluorescence(scene):
    """The task is learnable (nucleus borders are visible) but not trivial (weak raw correlation)."""
    phantom, bf_clean, bf, fl = scene
    r = np.corrcoef(bf.ravel(), fl.ravel())[0, 1]
    assert abs(r) < 0.5
    r_clean = np.corrcoef(bf_clean.ravel(), fl.ravel())[0, 1]
    assert abs(r_clean) < 0.6

    # in-plane gradient magnitude in the middle planes: strongest in a band around nucleus borders
    zs = slice(SHAPE[0] // 2 - 2, SHAPE[0] // 2 + 2)
    plane = np.zeros((3, 3, 3), bool)
    plane[1] = ndi.generate_binary_structure(2, 1)
    nuc = phantom.nucleus_mask[zs]
    cell = (phantom.cell_labels > 0)[zs]

    def dil(m, n):
        return ndi.binary_dilation(m, plane, iterations=n)

    def ero(m, n):
        return ndi.binary_erosion(m, plane, iterations=n)

    border = dil(nuc, 2) & ~ero(nuc, 2) & ero(cell, 3)
    interior = (ero(nuc, 4) | (cell & ~dil(nuc, 4) & ero(cell, 4)))
    background = ~dil(cell, 4)
    assert border.sum() > 500 and interior.sum() > 500 and background.sum() > 500
    for image, factor in ((bf_clean, 1.4), (bf, 1.2)):
        grad = np.stack([np.hypot(*np.gradient(ndi.gaussian_filter(p.astype(np.float64), 0.7))) for p in image[zs]])
        assert grad[border].mean() > factor * grad[interior].mean()
        assert grad[border].mean() > factor * grad[background].mean()
