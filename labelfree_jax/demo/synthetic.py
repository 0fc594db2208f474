"""Synthetic paired bright-field / fluorescence volumes of cells with nuclei (seeded, offline).

The model, in three cheap but physically motivated steps (all lengths in micrometres, all
volumes ``(Z, Y, X)`` on a grid of ``pixel_size_um = (dz, dy, dx)``):

1. **Phantom** (:func:`make_cell_phantom`). Cells are flattened ellipsoids with a slightly
   irregular outline lying side by side in one layer. Each holds an ellipsoidal nucleus
   (off-centre) with textured chromatin, a rim of peripheral heterochromatin and 1–3
   nucleoli. Two co-registered maps describe it:

   * the refractive index ``ri`` (dimensionless): medium ``n_medium`` (1.337), cytoplasm
     ≈ 1.348 with granular texture (organelles), nucleus ≈ 1.360 whose texture follows the
     chromatin, nucleoli ≈ 1.378;
   * the DNA density ``dna`` (arbitrary units, 0 outside nuclei, ≈ 1 inside, scaled per
     cell by a random "cell-cycle" factor in [0.7, 1.3] that the bright-field cannot see).

2. **Bright-field** (:func:`brightfield_from_phantom`). Each z-plane is treated as a thin
   phase object: the refractive-index excess over the medium, averaged over an optical
   section (Gaussian in z, FWHM ``section_um``) and multiplied by ``section_um``, gives an
   optical path, hence a phase ``phi = 2 pi / lambda * section_um * <n - n_medium>`` (radians)
   and a weak absorption ``mu = absorption * |phi|``. The complex transmission
   ``exp(i phi - mu)`` is propagated over a small defocus ``defocus_um`` with the paraxial
   (Fresnel) transfer function ``exp(-i pi lambda_m dz |f|^2)``
   (``lambda_m = wavelength / n_medium``) inside an objective pupil of numerical aperture
   ``na`` (soft edge). The image is ``|field|^2`` (1 = empty field; the field is mirror-padded
   in Y and X for the FFT so that cells cut by the edge do not wrap around). In the weak-phase
   limit this is ``1 - dz lambda_m / (2 pi) laplacian(phi)``, the transport-of-intensity
   picture: edges of refractive-index steps (cell, nucleus, nucleoli) show up, flat regions
   do not. Shot noise (Poisson, ``photons`` per pixel for the
   empty field) and Gaussian read noise (``read_noise`` photo-electrons) are added; the result
   is in units of the empty-field intensity.

3. **Fluorescence** (:func:`fluorescence_from_phantom`). The DNA density is blurred with a
   Gaussian PSF (``psf_sigma_um`` per axis, wider in z), scaled to ``photons`` at density 1,
   a uniform ``background`` (photons) is added, then Poisson shot noise and Gaussian read
   noise; the result is in photons.

The learning task is therefore realistic in kind: the bright-field shows nuclei only through
refractive-index edges and texture; the per-cell brightness and the noise of the
fluorescence cannot be predicted. Everything is deterministic given the seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi

from labelfree_jax.core.errors import InputError

__all__ = [
    "DEFAULT_PIXEL_SIZE_UM",
    "FLUORESCENCE_READ_NOISE",
    "N_MEDIUM",
    "Phantom",
    "brightfield_from_phantom",
    "fluorescence_from_phantom",
    "fluorescence_noise_variance",
    "make_cell_phantom",
    "make_pair",
    "make_pair_set",
]

#: Refractive index of the culture medium (water-like).
N_MEDIUM = 1.337
#: Default voxel size (µm) ``(z, y, x)``: isotropic 0.29 µm, the working grid of the 2017 fnet.
DEFAULT_PIXEL_SIZE_UM: tuple[float, float, float] = (0.29, 0.29, 0.29)
#: Default read noise of the fluorescence camera (photo-electrons, standard deviation).
FLUORESCENCE_READ_NOISE = 3.0

_N_CYTOPLASM = 1.348
_N_NUCLEUS = 1.360
_N_NUCLEOLUS = 1.378

SeedLike = int | np.random.SeedSequence | None


@dataclasses.dataclass(frozen=True)
class Phantom:
    """A synthetic cell volume; every array is ``(Z, Y, X)`` on the grid ``pixel_size_um``.

    Attributes:
        ri: refractive index, float32 (``n_medium`` outside cells).
        dna: DNA density, float32, arbitrary units (0 outside nuclei, about 1 inside).
        cell_labels: int32, 0 outside cells, ``k`` inside cell ``k`` (1-based).
        nucleus_mask: bool, inside a nucleus (nucleoli included).
        nucleolus_mask: bool, inside a nucleolus.
        pixel_size_um: ``(dz, dy, dx)`` in micrometres.
        n_medium: refractive index of the medium.
    """

    ri: np.ndarray
    dna: np.ndarray
    cell_labels: np.ndarray
    nucleus_mask: np.ndarray
    nucleolus_mask: np.ndarray
    pixel_size_um: tuple[float, float, float]
    n_medium: float = N_MEDIUM

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(int(s) for s in self.ri.shape)  # type: ignore[return-value]

    @property
    def pixel_sizes(self) -> dict[str, float]:
        """Pixel sizes as ``{"z", "y", "x"}`` (µm), the library's convention."""
        return dict(zip("zyx", (float(p) for p in self.pixel_size_um)))

    @property
    def n_cells(self) -> int:
        return int(self.cell_labels.max())


# ----------------------------------------------------------------------------- helpers


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (Z, Y, X) integers; got {shape!r}") from None
    if len(out) != 3 or min(out) < 1:
        raise InputError(f"shape must be (Z, Y, X) with every side >= 1; got {shape!r}")
    if out[1] < 16 or out[2] < 16:
        raise InputError(f"shape {out}: Y and X must be at least 16 pixels to hold a cell")
    return out  # type: ignore[return-value]


def _check_pixel_size(pixel_size_um: Sequence[float]) -> tuple[float, float, float]:
    try:
        ps = tuple(float(p) for p in pixel_size_um)
    except (TypeError, ValueError):
        raise InputError(f"pixel_size_um must be (dz, dy, dx) in µm; got {pixel_size_um!r}") from None
    if len(ps) != 3 or not all(math.isfinite(p) and p > 0 for p in ps):
        raise InputError(f"pixel_size_um must be three positive numbers (dz, dy, dx) in µm; got {pixel_size_um!r}")
    return ps  # type: ignore[return-value]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_um: float, ps: Sequence[float]) -> np.ndarray:
    """Gaussian random field, correlation length ``sigma_um``, rescaled to mean 0 and std 1 (float32)."""
    field = rng.standard_normal(shape).astype(np.float32)
    field = ndi.gaussian_filter(field, [sigma_um / p for p in ps], mode="wrap")
    field -= field.mean()
    std = float(field.std())
    return field / std if std > 0 else field


def _rotated_radius(
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    center: np.ndarray,
    semi_axes: np.ndarray,
    angle: float,
) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) of an ellipsoid rotated by ``angle`` in the YX plane."""
    z, y, x = coords
    dz, dy, dx = z - center[0], y - center[1], x - center[2]
    c, s = math.cos(angle), math.sin(angle)
    u = c * dy + s * dx
    v = -s * dy + c * dx
    return np.sqrt((dz / semi_axes[0]) ** 2 + (u / semi_axes[1]) ** 2 + (v / semi_axes[2]) ** 2)


def _rng(seed: SeedLike) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- phantom


def make_cell_phantom(
    shape: Sequence[int] = (32, 128, 128),
    *,
    n_cells: int | None = None,
    seed: SeedLike = 0,
    pixel_size_um: Sequence[float] = DEFAULT_PIXEL_SIZE_UM,
    cell_radius_um: tuple[float, float] = (6.0, 9.0),
    cell_height_um: tuple[float, float] = (5.0, 8.0),
    n_medium: float = N_MEDIUM,
) -> Phantom:
    """A seeded volume of cells with nuclei: refractive index and DNA density.

    Args:
        shape: ``(Z, Y, X)`` voxels (Y, X >= 16).
        n_cells: number of cells; default: enough to cover about 60 % of the field with cells
            of mean radius ``cell_radius_um`` (at least 1).
        seed: an int or :class:`numpy.random.SeedSequence`; the same seed gives the same phantom.
        pixel_size_um: voxel size ``(dz, dy, dx)`` in µm.
        cell_radius_um: range of the cells' in-plane semi-axes (µm).
        cell_height_um: range of the cells' full height (µm, z); cells are centred on the
            middle of the stack and may be cut by its ends.
        n_medium: refractive index of the medium.

    Returns:
        :class:`Phantom`. Cells overlap only slightly (centres are drawn at least ~1.2 mean
        radii apart while possible); where they do, the earlier cell wins.

    Raises:
        InputError: bad shape, pixel size or counts.
    """
    zyx = _check_shape(shape)
    ps = _check_pixel_size(pixel_size_um)
    if n_cells is not None and int(n_cells) < 1:
        raise InputError(f"n_cells must be >= 1; got {n_cells}")
    r_lo, r_hi = (float(v) for v in cell_radius_um)
    h_lo, h_hi = (float(v) for v in cell_height_um)
    if not (0 < r_lo <= r_hi and 0 < h_lo <= h_hi):
        raise InputError(f"cell_radius_um and cell_height_um must be increasing positive ranges; "
                         f"got {cell_radius_um!r}, {cell_height_um!r}")
    # Every random draw below comes from this one generator, in a fixed order: centres,
    # textures, then the cells one by one (the same seed gives the same phantom).
    rng = _rng(seed)
    extent = np.array([n * p for n, p in zip(zyx, ps)])  # µm
    r_mean = 0.5 * (r_lo + r_hi)
    if n_cells is None:
        n_cells = max(1, round(0.6 * extent[1] * extent[2] / (math.pi * r_mean**2)))
    centers_yx = _cell_centres(rng, int(n_cells), extent, r_mean)
    outline_noise = _smooth_noise(rng, zyx, 2.0, ps)  # irregular membranes
    cyto_texture = _smooth_noise(rng, zyx, 0.3, ps)  # organelles
    chromatin = _smooth_noise(rng, zyx, 0.35, ps)  # chromatin texture
    cells = _CellMaps(_voxel_centres(zyx, ps))
    zc = 0.5 * extent[0]
    for k, cyx in enumerate(centers_yx, start=1):
        cells.add_cell(rng, k, cyx, zc, (r_lo, r_hi), (h_lo, h_hi), outline_noise)
    ri, dna = cells.ri_and_dna(chromatin, cyto_texture, n_medium)
    return Phantom(
        ri=ri,
        dna=dna,
        cell_labels=cells.labels,
        nucleus_mask=cells.nucleus,
        nucleolus_mask=cells.nucleolus,
        pixel_size_um=ps,
        n_medium=float(n_medium),
    )


def _voxel_centres(zyx: tuple[int, int, int], ps: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates (µm) along z, y, x, shaped to broadcast to ``(Z, Y, X)``."""
    return tuple(
        ((np.arange(n, dtype=np.float32) + 0.5) * p).reshape([-1 if a == i else 1 for a in range(3)])
        for i, (n, p) in enumerate(zip(zyx, ps))
    )


def _cell_centres(rng: np.random.Generator, n_cells: int, extent: np.ndarray, r_mean: float) -> list[np.ndarray]:
    """In-plane cell centres (µm): best-candidate sampling keeps cells apart without ever failing."""
    centers_yx: list[np.ndarray] = []
    for _ in range(n_cells):
        cands = rng.uniform([0.05, 0.05], [0.95, 0.95], size=(24, 2)) * extent[1:]
        if centers_yx:
            d = np.min(np.linalg.norm(cands[:, None, :] - np.array(centers_yx)[None], axis=-1), axis=1)
            ok = np.flatnonzero(d >= 1.2 * r_mean)
            best = cands[ok[0]] if ok.size else cands[int(np.argmax(d))]
        else:
            best = cands[0]
        centers_yx.append(best)
    return centers_yx


class _CellMaps:
    """The label and mask volumes of a phantom, filled cell by cell, then turned into ``ri`` and ``dna``."""

    def __init__(self, coords: tuple[np.ndarray, np.ndarray, np.ndarray]):
        self.coords = coords
        full = np.broadcast_shapes(*(c.shape for c in coords))
        self.labels = np.zeros(full, np.int32)
        self.nucleus = np.zeros(full, bool)
        self.nucleolus = np.zeros(full, bool)
        self.brightness = np.zeros(full, np.float32)  # per-nucleus DNA amount ("cell cycle")
        self.periphery = np.zeros(full, np.float32)  # rim of peripheral heterochromatin

    def add_cell(self, rng: np.random.Generator, k: int, cyx: np.ndarray, zc: float,
                 radius_range: tuple[float, float], height_range: tuple[float, float],
                 outline_noise: np.ndarray) -> None:
        """Cell ``k`` centred at ``(zc, *cyx)`` (µm) with its nucleus and nucleoli, where no earlier cell is."""
        height = rng.uniform(*height_range)
        cell_axes = np.array([0.5 * height, rng.uniform(*radius_range), rng.uniform(*radius_range)])
        angle = rng.uniform(0, math.pi)
        center = np.array([zc + rng.uniform(-0.1, 0.1) * height, cyx[0], cyx[1]])
        r_cell = _rotated_radius(self.coords, center, cell_axes, angle) * (1.0 + 0.08 * outline_noise)
        in_cell = (r_cell < 1.0) & (self.labels == 0)
        if not in_cell.any():
            return
        self.labels[in_cell] = k

        nuc_axes = cell_axes * np.array([rng.uniform(0.6, 0.75), rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.6)])
        nuc_axes[0] = max(nuc_axes[0], 1.5)
        off = rng.uniform(-0.15, 0.15, size=2) * cell_axes[1:]
        nuc_center = center + np.array([0.0, off[0], off[1]])
        r_nuc = _rotated_radius(self.coords, nuc_center, nuc_axes, angle + rng.uniform(-0.3, 0.3))
        in_nuc = (r_nuc < 1.0) & in_cell
        self.nucleus |= in_nuc
        self.brightness[in_nuc] = rng.uniform(0.7, 1.3)
        self.periphery[in_nuc & (r_nuc > 0.85)] = 1.0
        self._add_nucleoli(rng, nuc_center, nuc_axes, in_nuc)

    def _add_nucleoli(self, rng: np.random.Generator, nuc_center: np.ndarray, nuc_axes: np.ndarray,
                      in_nuc: np.ndarray) -> None:
        """1-3 spherical nucleoli (radius 0.5-0.9 µm) inside the nucleus."""
        for _ in range(int(rng.integers(1, 4))):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            where = nuc_center + direction * rng.uniform(0.0, 0.45) * nuc_axes
            radius = rng.uniform(0.5, 0.9)
            d2 = sum(((c - w) / radius) ** 2 for c, w in zip(self.coords, where))
            self.nucleolus |= (d2 < 1.0) & in_nuc

    def ri_and_dna(self, chromatin: np.ndarray, cyto_texture: np.ndarray,
                   n_medium: float) -> tuple[np.ndarray, np.ndarray]:
        """Refractive index and DNA density ``(Z, Y, X)`` float32, anti-aliased (about one voxel)."""
        nucleus, nucleolus, brightness = self.nucleus, self.nucleolus, self.brightness
        cyto = (self.labels > 0) & ~nucleus
        chrom = np.clip(1.0 + 0.35 * chromatin + 0.4 * self.periphery, 0.2, None)

        dna = np.zeros(self.labels.shape, np.float32)
        dna[nucleus] = (brightness * chrom)[nucleus]
        dna[nucleolus] = 0.1 * brightness[nucleolus]

        ri = np.full(self.labels.shape, n_medium, np.float32)
        ri[cyto] = (_N_CYTOPLASM + 0.0025 * cyto_texture)[cyto]
        ri[nucleus] = (_N_NUCLEUS + 0.003 * (chrom - 1.0))[nucleus]
        ri[nucleolus] = _N_NUCLEOLUS
        # Anti-alias the sharp phase boundaries (about one voxel).
        ri = ndi.gaussian_filter(ri, 0.6, mode="nearest").astype(np.float32)
        dna = ndi.gaussian_filter(dna, 0.6, mode="nearest").astype(np.float32)
        return ri, dna



# ----------------------------------------------------------------------------- imaging


def brightfield_from_phantom(
    ri: np.ndarray,
    *,
    pixel_size_um: Sequence[float] = DEFAULT_PIXEL_SIZE_UM,
    n_medium: float = N_MEDIUM,
    wavelength_um: float = 0.55,
    defocus_um: float = 1.0,
    na: float = 0.6,
    section_um: float = 1.0,
    absorption: float = 0.05,
    photons: float = 3000.0,
    read_noise: float = 5.0,
    seed: SeedLike = 0,
) -> np.ndarray:
    """Bright-field z-stack of a refractive-index volume by a thin-slab defocus model.

    Args:
        ri: refractive index ``(Z, Y, X)``.
        pixel_size_um: voxel size ``(dz, dy, dx)`` (µm).
        n_medium: refractive index of the medium (zero phase).
        wavelength_um: vacuum wavelength of the illumination (µm).
        defocus_um: distance between each slab and the imaged plane (µm); 0 makes pure phase
            objects almost invisible, as in a real bright-field microscope.
        na: numerical aperture of the objective (pupil cut-off ``na / wavelength`` cycles/µm).
        section_um: optical section: the phase of plane ``z`` integrates the refractive
            index over a Gaussian in z of this FWHM, times this thickness (µm).
        absorption: amplitude attenuation per radian of phase (a weak absorbing part).
        photons: mean photo-electrons per pixel of the empty field (sets the shot noise);
            ``0`` for no noise at all.
        read_noise: standard deviation of the Gaussian read noise (photo-electrons).
        seed: noise seed.

    Returns:
        ``(Z, Y, X)`` float32 intensity in units of the empty field (about 1 in the medium).
    """
    ri = np.asarray(ri, dtype=np.float64)
    if ri.ndim != 3 or ri.size == 0:
        raise InputError(f"ri must be a (Z, Y, X) volume; got shape {ri.shape}")
    ps = _check_pixel_size(pixel_size_um)
    if wavelength_um <= 0 or na <= 0 or section_um <= 0 or photons < 0 or read_noise < 0:
        raise InputError("wavelength_um, na and section_um must be > 0; photons and read_noise >= 0")
    k0 = 2.0 * math.pi / wavelength_um
    sigma_z = section_um / (2.0 * math.sqrt(2.0 * math.log(2.0))) / ps[0]
    delta = ndi.gaussian_filter1d(ri - n_medium, sigma_z, axis=0, mode="constant") if ri.shape[0] > 1 else ri - n_medium
    phi = k0 * section_um * delta
    # Mirror-pad in Y and X so that cells cut by the field's edge do not wrap around the FFT.
    pad = [(0, 0)] + [(min(32, n), min(32, n)) for n in ri.shape[1:]]
    phi = np.pad(phi, pad, mode="symmetric")
    field = np.exp(1j * phi - absorption * np.abs(phi))

    fy = np.fft.fftfreq(field.shape[1], d=ps[1])[:, None]
    fx = np.fft.fftfreq(field.shape[2], d=ps[2])[None, :]
    f2 = fy**2 + fx**2
    lam_m = wavelength_um / n_medium
    cutoff = na / wavelength_um
    pupil = 1.0 / (1.0 + np.exp((np.sqrt(f2) - cutoff) / (0.05 * cutoff)))  # soft edge
    transfer = pupil * np.exp(-1j * math.pi * lam_m * defocus_um * f2)
    # Normalise so the empty field (a delta at f = 0) keeps intensity 1.
    transfer = transfer / transfer[0, 0]
    image = np.abs(np.fft.ifft2(np.fft.fft2(field, axes=(1, 2)) * transfer, axes=(1, 2))) ** 2
    image = image[:, pad[1][0]: pad[1][0] + ri.shape[1], pad[2][0]: pad[2][0] + ri.shape[2]]

    if photons > 0:
        rng = _rng(seed)
        counts = rng.poisson(np.clip(image, 0, None) * photons).astype(np.float64)
        counts += rng.normal(0.0, read_noise, size=counts.shape)
        image = counts / photons
    return image.astype(np.float32)


def fluorescence_noise_variance(target: np.ndarray, *, read_noise: float = FLUORESCENCE_READ_NOISE) -> float:
    """Mean noise variance (photons²) of a fluorescence image made by :func:`fluorescence_from_phantom`.

    Poisson noise has the variance of its mean, so averaged over the voxels the noise variance
    is the mean expected count plus ``read_noise**2``; the observed mean estimates the former
    without bias. The noise has zero mean given the clean image, so it is uncorrelated with it,
    as the noise ceiling :func:`labelfree_jax.evaluation.metrics.noise_ceiling_cmax` assumes.
    """
    return float(np.mean(np.asarray(target, dtype=np.float64))) + float(read_noise) ** 2


def fluorescence_from_phantom(
    dna: np.ndarray,
    *,
    pixel_size_um: Sequence[float] = DEFAULT_PIXEL_SIZE_UM,
    psf_sigma_um: Sequence[float] = (0.6, 0.2, 0.2),
    photons: float = 200.0,
    background: float = 20.0,
    read_noise: float = FLUORESCENCE_READ_NOISE,
    seed: SeedLike = 0,
) -> np.ndarray:
    """Widefield-like fluorescence image of a DNA density (Gaussian PSF, shot and read noise).

    Args:
        dna: DNA density ``(Z, Y, X)`` (arbitrary units, >= 0).
        pixel_size_um: voxel size ``(dz, dy, dx)`` (µm).
        psf_sigma_um: standard deviation of the Gaussian PSF per axis ``(z, y, x)`` in µm.
        photons: expected photo-electrons per voxel at density 1 (after blurring).
        background: uniform background (photo-electrons per voxel).
        read_noise: standard deviation of the Gaussian read noise (photo-electrons).
        seed: noise seed; ``photons=0`` is not allowed (use a large value for little noise).

    Returns:
        ``(Z, Y, X)`` float32 in photo-electrons.
    """
    dna = np.asarray(dna, dtype=np.float64)
    if dna.ndim != 3 or dna.size == 0:
        raise InputError(f"dna must be a (Z, Y, X) volume; got shape {dna.shape}")
    ps = _check_pixel_size(pixel_size_um)
    sig = tuple(float(s) for s in psf_sigma_um)
    if len(sig) != 3 or min(sig) < 0 or photons <= 0 or background < 0 or read_noise < 0:
        raise InputError("psf_sigma_um must be 3 values >= 0, photons > 0, background and read_noise >= 0")
    blurred = ndi.gaussian_filter(np.clip(dna, 0, None), [s / p for s, p in zip(sig, ps)], mode="constant")
    rng = _rng(seed)
    counts = rng.poisson(blurred * photons + background).astype(np.float64)
    counts += rng.normal(0.0, read_noise, size=counts.shape)
    return counts.astype(np.float32)


# ----------------------------------------------------------------------------- pairs


def make_pair(
    shape: Sequence[int] = (32, 128, 128),
    *,
    seed: SeedLike = 0,
    pixel_size_um: Sequence[float] = DEFAULT_PIXEL_SIZE_UM,
) -> tuple[np.ndarray, np.ndarray, Phantom]:
    """One synthetic pair: ``(signal, target, phantom)``.

    ``signal`` (bright-field, empty-field units) and ``target`` (fluorescence, photons) are
    float32 ``(1, Z, Y, X)``; ``phantom`` is the :class:`Phantom` they were imaged from.
    Phantom, bright-field noise and fluorescence noise use independent streams of ``seed``.
    """
    ps = _check_pixel_size(pixel_size_um)
    s_phantom, s_bf, s_fl = np.random.SeedSequence(_entropy(seed)).spawn(3)
    phantom = make_cell_phantom(shape, seed=s_phantom, pixel_size_um=ps)
    signal = brightfield_from_phantom(phantom.ri, pixel_size_um=ps, n_medium=phantom.n_medium, seed=s_bf)
    target = fluorescence_from_phantom(phantom.dna, pixel_size_um=ps, seed=s_fl)
    return signal[None], target[None], phantom


def make_pair_set(
    n_volumes: int,
    shape: Sequence[int] = (32, 128, 128),
    seed: int = 0,
    *,
    pixel_size_um: Sequence[float] = DEFAULT_PIXEL_SIZE_UM,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_volumes`` independent synthetic pairs ``(signal, target)``, each float32 ``(1, Z, Y, X)``.

    ``signal`` is the bright-field z-stack (empty-field units), ``target`` the DNA fluorescence
    (photons); see the module docstring for the model. Volume ``i`` depends only on ``seed``
    and ``i``, so ``make_pair_set(2, s)`` is the first two volumes of ``make_pair_set(5, s)``.
    """
    if int(n_volumes) < 1:
        raise InputError(f"n_volumes must be >= 1; got {n_volumes}")
    children = np.random.SeedSequence(_entropy(seed)).spawn(int(n_volumes))
    pairs = []
    for child in children:
        signal, target, _ = make_pair(shape, seed=child, pixel_size_um=pixel_size_um)
        pairs.append((signal, target))
    return pairs


def _entropy(seed: SeedLike):
    """What :class:`numpy.random.SeedSequence` takes: an int, or an existing sequence's state."""
    if isinstance(seed, np.random.SeedSequence):
        return seed.generate_state(4)
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"seed must be a non-negative int; got {seed!r}")
    return int(seed)
