"""The original public Allen Institute label-free dataset: resumable download, unpacking, manifests.

The 2018 paper's data (Ounkomol et al., Nature Methods 2018) is published as one archive per
cell line, the ones the original pytorch_fnet ``scripts/download_all_data.sh`` fetches::

    https://s3-us-west-2.amazonaws.com/downloads.allencell.org/publication-data/label-free-prediction/<name>.tar.gz

Each archive unpacks to ``<name>/*.czi``: Zeiss CZI z-stacks (e.g. 7 channels x 65 z x 624 x
924) with the transmitted-light image and the fluorescence channels. Which channel is which
depends on the channel count (as in the original CSVs, ``channel_signal``/``channel_target``):

======== ============ ======== ========== =====
channels bright field membrane  structure  DNA
======== ============ ======== ========== =====
7        6            1         3          5
4        3            0         1          2
======== ============ ======== ========== =====

(for ``dic_lamin_b1`` the "bright field" channel 6 is DIC). The zoo structures
(:data:`STRUCTURES`) take their images from these archives: a structure's own archive with
its structure channel as the target; ``dna`` and ``membrane`` from every 3D fluorescence
archive with the DNA / membrane-dye channel; ``dic_lamin_b1`` / ``dic_membrane`` from the
DIC archive.

:func:`write_manifests` writes per structure ``all.csv``, ``train.csv`` and ``test.csv``
(columns ``path,channel_signal,channel_target``; paths relative to the CSV) with the
original split procedure: rows in a fixed order, ``numpy.random.RandomState(42).permutation``
(what the original ``split_dataset.py`` gets from ``pandas.sample``), the first 75 % for
training. The original CSVs listed rows in an order we do not have, so the partition is
the original *procedure*, not necessarily the identical file lists; pass the original
``<structure>_train.csv`` / ``<structure>_test.csv`` files (``split_dir``) to use exactly
those lists.

Downloads (:func:`download_file`) resume with HTTP ``Range`` requests after an interruption,
and are checked against a sha256 (given, or recorded in ``SHA256SUMS`` on first download).
"""

from __future__ import annotations

import csv
import http.client
import io as _stdio
import logging
import os
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from labelfree_jax.core.atomic import atomic_write_text
from labelfree_jax.core.errors import ConfigError, InputError, IntegrityError
from labelfree_jax.core.hashing import sha256_file

__all__ = [
    "ARCHIVES",
    "BASE_URL",
    "CHANNEL_LAYOUTS",
    "CHECKSUM_FILE",
    "FLUORESCENCE_ARCHIVES",
    "MANIFEST_COLUMNS",
    "STRUCTURES",
    "StructureSpec",
    "archive_url",
    "channel_count",
    "collect_images",
    "download_archives",
    "download_file",
    "extract_archive",
    "read_checksums",
    "structure_rows",
    "write_manifests",
]

log = logging.getLogger(__name__)

BASE_URL = "https://s3-us-west-2.amazonaws.com/downloads.allencell.org/publication-data/label-free-prediction"

#: Every archive the original download script fetches.
ARCHIVES: tuple[str, ...] = (
    "beta_actin",
    "myosin_iib",
    "membrane_caax_63x",
    "desmoplakin",
    "sec61_beta",
    "st6gal1",
    "fibrillarin",
    "lamin_b1",
    "dic_lamin_b1",
    "alpha_tubulin",
    "tom20",
    "zo1",
    "timelapse_wt2_s2",
)

#: The 3D bright-field + fluorescence archives of the tagged cell lines.
FLUORESCENCE_ARCHIVES: tuple[str, ...] = (
    "alpha_tubulin",
    "beta_actin",
    "desmoplakin",
    "fibrillarin",
    "lamin_b1",
    "myosin_iib",
    "sec61_beta",
    "st6gal1",
    "tom20",
    "zo1",
)

#: channel count -> channel index of each role (from the original fnet CSVs).
CHANNEL_LAYOUTS: dict[int, dict[str, int]] = {
    7: {"signal": 6, "membrane": 1, "structure": 3, "dna": 5},
    4: {"signal": 3, "membrane": 0, "structure": 1, "dna": 2},
}

CHECKSUM_FILE = "SHA256SUMS"
MANIFEST_COLUMNS = ("path", "channel_signal", "channel_target")
_IMAGE_SUFFIXES = (".czi", ".tif", ".tiff")


@dataclass(frozen=True)
class StructureSpec:
    """Where a zoo structure's images come from and which channel is the target."""

    archives: tuple[str, ...]
    target: str  # "structure", "dna" or "membrane"
    dic: bool = False


STRUCTURES: dict[str, StructureSpec] = {
    "dna": StructureSpec(FLUORESCENCE_ARCHIVES, "dna"),
    "membrane": StructureSpec(FLUORESCENCE_ARCHIVES, "membrane"),
    **{name: StructureSpec((name,), "structure") for name in FLUORESCENCE_ARCHIVES},
    "dic_lamin_b1": StructureSpec(("dic_lamin_b1",), "structure", dic=True),
    "dic_membrane": StructureSpec(("dic_lamin_b1",), "membrane", dic=True),
}


def archive_url(name: str, base_url: str = BASE_URL) -> str:
    """URL of archive ``name`` (``<base_url>/<name>.tar.gz``)."""
    return f"{base_url.rstrip('/')}/{name}.tar.gz"


# --------------------------------------------------------------------------------------------
# checksums
# --------------------------------------------------------------------------------------------
def read_checksums(folder: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` from ``<folder>/SHA256SUMS`` (``sha256sum`` format); {} if absent."""
    path = Path(folder) / CHECKSUM_FILE
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise IntegrityError(f"{path}, line {n}: expected '<sha256>  <file name>', got {line!r}")
        out[parts[1].lstrip("*").strip()] = parts[0].lower()
    return out


def _record_checksum(folder: Path, name: str, digest: str) -> None:
    sums = read_checksums(folder)
    sums[name] = digest
    atomic_write_text(folder / CHECKSUM_FILE, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


# --------------------------------------------------------------------------------------------
# resumable download
# --------------------------------------------------------------------------------------------
def _content_total(resp, offset: int) -> int | None:
    rng = resp.headers.get("Content-Range")
    if rng and "/" in rng:
        total = rng.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


_RETRYABLE = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def _check_existing(dest: Path, expected: str | None) -> None:
    """Verify an already downloaded ``dest`` (record its sha256 when none is known)."""
    digest = sha256_file(dest)
    if expected is not None and digest != expected:
        raise IntegrityError(f"{dest}: sha256 {digest} does not match the expected {expected}; delete it to download again")
    if expected is None:
        _record_checksum(dest.parent, dest.name, digest)
    log.info("%s: already downloaded (sha256 ok)", dest)


def _request(url: str, part: Path, bar: tqdm, *, timeout: float, chunk_size: int) -> None:
    """One HTTP request: append the rest of ``url`` to ``part`` (a Range request when ``part`` has bytes).

    ``bar`` is reset to the size of this response and counts the bytes written.

    Raises:
        urllib.error.HTTPError: an HTTP error status.
        http.client.IncompleteRead: the connection closed before the announced length (and the
            other errors of ``_RETRYABLE``): the caller retries.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "labelfree-jax"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        if have and getattr(resp, "status", 200) != 206:
            log.info("%s: the server ignored the Range request; downloading from the start", url)
            have = 0
        total = _content_total(resp, have)
        bar.reset(total=total)
        bar.update(have)
        with open(part, "ab" if have else "wb") as fh:
            while block := resp.read(chunk_size):
                fh.write(block)
                bar.update(len(block))
        size = part.stat().st_size
        if total is not None and size < total:
            raise http.client.IncompleteRead(b"", total - size)


def _fetch_resuming(url: str, part: Path, *, desc: str, progress: bool, retries: int, timeout: float,
                    chunk_size: int) -> None:
    """Fill ``part`` with all of ``url``: retry a dropped connection up to ``retries`` times, resuming.

    Raises:
        InputError: an HTTP error, or still incomplete after the retries.
    """
    attempt = 0
    with tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress) as bar:
        while True:
            try:
                _request(url, part, bar, timeout=timeout, chunk_size=chunk_size)
                return
            except urllib.error.HTTPError as err:
                if err.code == 416 and part.exists() and part.stat().st_size:
                    log.info("%s: the server has nothing after byte %d: the partial file is complete", url,
                             part.stat().st_size)
                    return
                raise InputError(f"{url}: HTTP error {err.code} {err.reason}") from err
            except _RETRYABLE as err:
                attempt += 1
                if attempt > retries:
                    raise InputError(
                        f"{url}: download interrupted ({type(err).__name__}: {err}) after {retries} retries; "
                        f"run again to resume from byte {part.stat().st_size if part.exists() else 0}"
                    ) from err
                log.warning("%s: %s; resuming (retry %d of %d)", url, err, attempt, retries)
                time.sleep(min(2.0 ** (attempt - 1), 30.0) * 0.1)


def download_file(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    retries: int = 5,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    The data goes to ``<dest>.part``; a dropped connection is retried (``retries`` times, with
    a Range request for the rest); a server that ignores Range (status 200) restarts the file.
    When complete, the file's sha256 is checked against ``sha256`` (when given) or against
    the value recorded in ``SHA256SUMS`` beside ``dest``; with neither, it is recorded there.
    Only then is the file renamed to ``dest``. An existing ``dest`` is verified the same way
    and not downloaded again.

    Raises:
        IntegrityError: the checksum does not match (the bad file is removed).
        InputError: not an http(s) URL, HTTP errors, or still incomplete after the retries.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise InputError(f"{url}: only http(s) URLs are downloaded")
    dest.parent.mkdir(parents=True, exist_ok=True)
    folder = dest.parent
    expected = (sha256 or read_checksums(folder).get(dest.name) or "").lower() or None
    if dest.is_file():
        _check_existing(dest, expected)
        return dest
    part = dest.with_name(dest.name + ".part")
    _fetch_resuming(url, part, desc=dest.name, progress=progress, retries=retries, timeout=timeout,
                    chunk_size=chunk_size)
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"{url}: downloaded file has sha256 {digest}, expected {expected}; removed it")
    os.replace(part, dest)
    if expected is None:
        _record_checksum(folder, dest.name, digest)
        log.info("%s: recorded sha256 %s in %s", dest.name, digest, folder / CHECKSUM_FILE)
    return dest


def download_archives(
    names: Iterable[str],
    archive_dir: str | Path,
    *,
    base_url: str = BASE_URL,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
    retries: int = 5,
) -> list[Path]:
    """Download ``<name>.tar.gz`` for each name into ``archive_dir`` (resumable, verified)."""
    out = []
    for name in names:
        if name not in ARCHIVES:
            raise ConfigError(f"unknown archive {name!r}; known: {', '.join(ARCHIVES)}")
        file = f"{name}.tar.gz"
        digest = (checksums or {}).get(name) or (checksums or {}).get(file)
        out.append(download_file(archive_url(name, base_url), Path(archive_dir) / file, sha256=digest,
                                 progress=progress, retries=retries))
    return out


def extract_archive(archive: str | Path, image_dir: str | Path) -> Path:
    """Unpack a ``.tar.gz`` into ``image_dir`` (only regular files and folders, nothing outside it).

    A marker ``.<archive name>.extracted`` holding the archive's size skips a second unpacking.
    Returns ``image_dir``.
    """
    archive, image_dir = Path(archive), Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    marker = image_dir / f".{archive.name}.extracted"
    size = str(archive.stat().st_size)
    if marker.is_file() and marker.read_text().strip() == size:
        log.info("%s: already unpacked", archive)
        return image_dir
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(image_dir, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"{archive}: cannot unpack: {err}") from err
    atomic_write_text(marker, size + "\n")
    log.info("unpacked %s into %s", archive, image_dir)
    return image_dir


# --------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------
def channel_count(path: str | Path) -> int:
    """Number of channels of an image file.

    CZI files are asked through their header (czifile's directory; no pixels are read: the
    original files are ~0.5 GB each); other formats go through :func:`labelfree_jax.imagefiles.read.read_image`.
    """
    path = Path(path)
    if path.suffix.lower() == ".czi":
        try:
            import czifile
        except ImportError:
            raise InputError(f"{path}: reading CZI files needs the 'czifile' package: pip install labelfree-jax[czi]") from None
        try:
            with czifile.CziFile(str(path)) as czi:
                axes, shape = czi.axes, czi.shape
        except Exception as err:
            raise InputError(f"{path}: cannot read the CZI header: {type(err).__name__}: {err}") from err
        return int(shape[axes.index("C")]) if "C" in axes else 1
    from labelfree_jax.imagefiles import read_image

    return read_image(path).n_channels


def collect_images(image_dir: str | Path, archive: str) -> list[Path]:
    """Image files of one unpacked archive (``<image_dir>/<archive>/**``), sorted by path."""
    root = Path(image_dir) / archive
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)


def structure_rows(structure: str, image_dir: str | Path) -> list[tuple[Path, int, int]]:
    """``(file, signal channel, target channel)`` for every image of ``structure``, in a fixed order.

    Files with a channel count not in :data:`CHANNEL_LAYOUTS` are skipped with a warning.
    """
    spec = STRUCTURES.get(structure)
    if spec is None:
        raise ConfigError(f"unknown structure {structure!r}; known: {', '.join(STRUCTURES)}")
    rows = []
    for archive in spec.archives:
        for path in collect_images(image_dir, archive):
            n = channel_count(path)
            layout = CHANNEL_LAYOUTS.get(n)
            if layout is None:
                log.warning("%s: %d channels, not a known layout (%s); skipped", path, n, sorted(CHANNEL_LAYOUTS))
                continue
            rows.append((path, layout["signal"], layout[spec.target]))
    return rows


def _read_split_list(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        col = next((c for c in ("path_czi", "path", "path_signal") if c in (reader.fieldnames or [])), None)
        if col is None:
            raise InputError(f"{path}: expected a path_czi (or path) column")
        return [Path(r[col].replace("\\", "/")).name for r in reader if r.get(col)]


def _find_split_lists(split_dir: Path, structure: str) -> tuple[list[str], list[str]] | None:
    for train, test in (
        (split_dir / f"{structure}_train.csv", split_dir / f"{structure}_test.csv"),
        (split_dir / structure / "train.csv", split_dir / structure / "test.csv"),
    ):
        if train.is_file() and test.is_file():
            return _read_split_list(train), _read_split_list(test)
    return None


def _write_manifest(path: Path, rows: Sequence[tuple[Path, int, int]]) -> Path:
    buf = _stdio.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MANIFEST_COLUMNS)
    for file, sig, tgt in rows:
        w.writerow([Path(os.path.relpath(file, path.parent)).as_posix(), sig, tgt])
    return atomic_write_text(path, buf.getvalue())


def write_manifests(
    image_dir: str | Path,
    manifest_dir: str | Path,
    structures: Iterable[str] | None = None,
    *,
    train_fraction: float = 0.75,
    seed: int = 42,
    split_dir: str | Path | None = None,
) -> dict[str, dict[str, Path]]:
    """Write ``<manifest_dir>/<structure>/{all,train,test}.csv`` for each structure with images.

    Rows are ordered by archive and file path; the split is the original procedure
    (``RandomState(seed).permutation``, the first ``round(n * train_fraction)`` rows train).
    With ``split_dir`` holding the original ``<structure>_train.csv`` / ``_test.csv`` (or
    ``<structure>/train.csv`` / ``test.csv``), their file lists (by file name) decide instead.
    Structures whose archives are not unpacked are skipped (logged).

    Returns:
        ``{structure: {"all": path, "train": path, "test": path}}`` for the structures written.
    """
    if not 0 < train_fraction < 1:
        raise ConfigError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    manifest_dir = Path(manifest_dir)
    written: dict[str, dict[str, Path]] = {}
    for structure in structures if structures is not None else STRUCTURES:
        rows = structure_rows(structure, image_dir)
        if not rows:
            log.warning("%s: no images found under %s (archives %s); no manifest written", structure, image_dir,
                        ", ".join(STRUCTURES[structure].archives))
            continue
        lists = _find_split_lists(Path(split_dir), structure) if split_dir is not None else None
        if lists is not None:
            by_name = {r[0].name: r for r in rows}
            train = [by_name[n] for n in lists[0] if n in by_name]
            test = [by_name[n] for n in lists[1] if n in by_name]
            absent = len(lists[0]) + len(lists[1]) - len(train) - len(test)
            if absent:
                log.warning("%s: %d files of the original split lists are not among the unpacked images", structure, absent)
        else:
            perm = np.random.RandomState(seed).permutation(len(rows))
            n_train = round(len(rows) * train_fraction)
            train = [rows[i] for i in perm[:n_train]]
            test = [rows[i] for i in perm[n_train:]]
        out = manifest_dir / structure
        written[structure] = {
            "all": _write_manifest(out / "all.csv", rows),
            "train": _write_manifest(out / "train.csv", train),
            "test": _write_manifest(out / "test.csv", test),
        }
        log.info("%s: %d images (%d train / %d test) -> %s", structure, len(rows), len(train), len(test), out)
    return written
