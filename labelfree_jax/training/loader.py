"""The patch loader: random paired patches from a buffer of images, and fixed validation patches.

:class:`PatchLoader` reproduces the original fnet ``BufferedPatchDataset``: a buffer of
``buffer_size`` loaded, transformed images; every patch comes from a uniformly chosen
buffer image at a uniformly chosen position (never crossing the image edge); after every
``buffer_switch_interval`` patches the oldest buffer image is replaced by the next image
of a shuffled pass over the dataset. Optional flips and 90° rotations in the y-x plane are
applied identically to signal, target and weight; optional intensity augmentations
(:mod:`~labelfree_jax.training.augment`) change the signal only, after them.

The loader is *counter based*: all randomness of patch ``p`` comes from
``numpy.random.default_rng((seed, p))`` and the buffer content at patch ``p`` is a pure
function of ``(seed, p)``. So the loader state is just the index of the next patch
(:meth:`PatchLoader.state`); restarting at that index reproduces the same batches, which is
what makes a resumed training run identical to an uninterrupted one.

Batches are built by a background thread (and optionally moved to the devices there), a
few batches ahead, while a second thread loads the next buffer image before it is needed,
so the training loop does not wait on disk as long as the loader is faster than training
(:attr:`PatchLoader.stats`: patches/s of the producer vs the consumer's waiting time).

:func:`sample_patches` draws a fixed set of patches (validation); :func:`measure_loader`
measures a loader's throughput without training.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.training.augment import IntensityAugmentation, augment_signal
from labelfree_jax.training.datasets import SPATIAL_AXES, ImagePair, PairDataset

__all__ = [
    "Batch",
    "PatchLoader",
    "measure_loader",
    "sample_patches",
]

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A batch of patches, channel-first.

    Attributes:
        signal: ``(B, C_in, *patch_shape)`` float32 (numpy, or whatever ``transfer`` made of it).
        target: ``(B, C_out, *patch_shape)``.
        weight: ``(B, 1 or C_out, *patch_shape)`` or None.
        first_patch: global index of the batch's first patch.
    """

    signal: Any
    target: Any
    weight: Any
    first_patch: int


_PATCH_STREAM = 0x7061746368  # "patch": separates the patch and the image-order random streams
_ORDER_STREAM = 0x6F72646572  # "order"
_AUGMENT_STREAM = 0x696E74656E  # "inten": the intensity augmentations (their own stream: the patches stay the same)


@dataclass
class _Stats:
    patches: int = 0
    produce_seconds: float = 0.0
    wait_seconds: float = 0.0
    images_loaded: int = 0
    load_seconds: float = 0.0
    batches_consumed: int = 0


class PatchLoader:
    """Random paired patches from a buffer of images (see the module docstring).

    Args:
        dataset: a :class:`PairDataset`.
        patch_shape: spatial patch, ``(Z, Y, X)`` or ``(Y, X)``.
        batch_size: patches per (global) batch.
        buffer_size: images held in memory (capped at ``len(dataset)``).
        buffer_switch_interval: replace the oldest buffer image after every this many
            patches (``<= 0``: never).
        shuffle_images: order of images entering the buffer: a new random permutation per
            pass (True) or dataset order (False).
        flip: random flip of each spatial axis (p = 0.5).
        rotate90: random rotation by k * 90° in the y-x plane (k uniform in 0..3); when the
            patch is not square in y-x, the window is taken with y and x swapped so the
            rotated patch has ``patch_shape`` (an image too small for that uses k in {0, 2}).
        seed: the seed of every random choice.
        start_patch: global index of the first patch (resume: the saved :meth:`state`).
        prefetch: batches built ahead by the background thread (0: build in ``__next__``).
        process_index, process_count: multi-host data parallelism: this process builds rows
            ``[i * B / n, (i + 1) * B / n)`` of every global batch.
        transfer: called on each finished :class:`Batch` in the background thread (e.g. to
            put it on the devices); its result is what iteration yields.
        use_weights: deliver the weight maps (when the dataset has them); False drops them.
        intensity: intensity augmentations of the signal patches (None: none); patch ``p``
            draws them from ``default_rng((seed, stream, p))``, a stream of their own.

    Raises:
        InputError: an image smaller than the patch (the message names it), or a dataset
            that cannot be read.
    """

    def __init__(
        self,
        dataset: PairDataset,
        *,
        patch_shape: Sequence[int],
        batch_size: int,
        buffer_size: int = 1,
        buffer_switch_interval: int = -1,
        shuffle_images: bool = True,
        flip: bool = False,
        rotate90: bool = False,
        seed: int = 0,
        start_patch: int = 0,
        prefetch: int = 2,
        process_index: int = 0,
        process_count: int = 1,
        transfer: Callable[[Batch], Any] | None = None,
        use_weights: bool = True,
        intensity: IntensityAugmentation | None = None,
    ):
        if len(dataset) == 0:
            raise InputError("the training dataset is empty")
        self.dataset = dataset
        self.patch_shape = tuple(int(s) for s in patch_shape)
        if len(self.patch_shape) not in (2, 3) or min(self.patch_shape) < 1:
            raise ConfigError(f"patch_shape must have 2 or 3 positive sides, got {patch_shape}")
        self.ndim = len(self.patch_shape)
        if batch_size < 1 or batch_size % process_count:
            raise ConfigError(f"batch_size {batch_size} must be a positive multiple of the process count {process_count}")
        self.batch_size = int(batch_size)
        self.local_batch = self.batch_size // process_count
        self.row_offset = process_index * self.local_batch
        self.buffer_size = min(int(buffer_size), len(dataset))
        self.switch_interval = int(buffer_switch_interval)
        self.shuffle_images = bool(shuffle_images)
        self.flip = bool(flip)
        self.rotate90 = bool(rotate90)
        self.seed = int(seed)
        self.next_patch = int(start_patch)  # next patch the consumer will receive
        self.prefetch = int(prefetch)
        self.transfer = transfer
        self.use_weights = bool(use_weights)
        self.intensity = intensity
        self.stats = _Stats()
        self._epoch_orders: dict[int, np.ndarray] = {}
        self._cache: dict[int, ImagePair] = {}
        self._loading: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patch-loader-images")
        self._queue: queue.Queue = queue.Queue(maxsize=max(self.prefetch, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._produce_from = self.next_patch
        self._started = False
        self._first_buffer: list[ImagePair] = []

    # ---------------------------------------------------------------- deterministic schedule
    def _order(self, epoch: int) -> np.ndarray:
        """Image order of pass ``epoch`` over the dataset (a pure function of seed and epoch)."""
        with self._lock:
            order = self._epoch_orders.get(epoch)
            if order is None:
                n = len(self.dataset)
                if self.shuffle_images:
                    order = np.random.default_rng((self.seed, _ORDER_STREAM, epoch)).permutation(n)
                else:
                    order = np.arange(n)
                self._epoch_orders[epoch] = order
                if len(self._epoch_orders) > 4:
                    self._epoch_orders.pop(min(self._epoch_orders))
            return order

    def insertion_index(self, insertion: int) -> int:
        """Dataset index of the ``insertion``-th image entering the buffer (0-based)."""
        n = len(self.dataset)
        return int(self._order(insertion // n)[insertion % n])

    def window_start(self, patch: int) -> int:
        """Insertion number of the oldest buffer image when patch ``patch`` is drawn."""
        if self.switch_interval <= 0:
            return 0
        return patch // self.switch_interval

    def buffer_at(self, patch: int) -> list[int]:
        """Dataset indices in the buffer when patch ``patch`` is drawn, oldest first."""
        w = self.window_start(patch)
        return [self.insertion_index(w + j) for j in range(self.buffer_size)]

    def first_buffer(self) -> list[ImagePair]:
        """The images of the buffer loaded by :meth:`start` (oldest first), for checks."""
        return list(self._first_buffer)

    def state(self) -> dict[str, int]:
        """What a resumed loader needs: ``{"seed", "next_patch"}`` (patches handed out so far)."""
        return {"seed": self.seed, "next_patch": self.next_patch}

    # ---------------------------------------------------------------- images
    def _load(self, index: int) -> ImagePair:
        t0 = time.perf_counter()
        pair = self.dataset.load(index)
        small = [
            f"{n} {s} < {p}" for n, s, p in zip(SPATIAL_AXES[self.ndim], pair.spatial_shape, self.patch_shape) if s < p
        ]
        if len(pair.spatial_shape) != self.ndim:
            raise InputError(
                f"{self.dataset.describe(index)}: the image has {len(pair.spatial_shape)} spatial axes "
                f"(shape {pair.spatial_shape}) but patches are {self.ndim}D {self.patch_shape}"
            )
        if small:
            raise InputError(
                f"{self.dataset.describe(index)}: the image (after transforms) has spatial shape {pair.spatial_shape}, "
                f"smaller than the patch shape {self.patch_shape} ({', '.join(small)}); use a smaller patch_shape "
                f"or drop this image"
            )
        with self._lock:
            self.stats.images_loaded += 1
            self.stats.load_seconds += time.perf_counter() - t0
        log.info("buffered %s (%s)", self.dataset.describe(index), pair.spatial_shape)
        return pair

    def _get_image(self, index: int) -> ImagePair:
        pair = self._cache.get(index)
        if pair is not None:
            return pair
        fut = self._loading.pop(index, None)
        pair = fut.result() if fut is not None else self._load(index)
        self._cache[index] = pair
        return pair

    def _prepare_window(self, patch: int) -> list[int]:
        """Make sure the buffer for ``patch`` is loaded; evict the rest; preload the next image."""
        w = self.window_start(patch)
        needed = [self.insertion_index(w + j) for j in range(self.buffer_size)]
        for idx in list(self._cache):
            if idx not in needed:
                del self._cache[idx]
        for idx in needed:
            self._get_image(idx)
        if self.switch_interval > 0:
            upcoming = self.insertion_index(w + self.buffer_size)
            if upcoming not in self._cache and upcoming not in self._loading:
                self._loading = {k: f for k, f in self._loading.items() if not f.done() or k == upcoming}
                self._loading[upcoming] = self._pool.submit(self._load, upcoming)
        return needed

    # ---------------------------------------------------------------- patches
    def _patch(self, p: int):
        """Signal, target, weight patches of global patch ``p`` (channel-first, contiguous)."""
        needed = self._prepare_window(p)
        rng = np.random.default_rng((self.seed, _PATCH_STREAM, p))
        slot = int(rng.integers(self.buffer_size))
        pair = self._cache[needed[slot]]
        k = int(rng.integers(4)) if self.rotate90 else 0
        window = list(self.patch_shape)
        if k % 2:
            window[-2], window[-1] = window[-1], window[-2]
            if any(s < w for s, w in zip(pair.spatial_shape, window)):
                k -= 1  # the swapped window does not fit: rotate by 0 or 180 degrees instead
                window = list(self.patch_shape)
        starts = [int(rng.integers(0, s - w + 1)) for s, w in zip(pair.spatial_shape, window)]
        flips = (rng.random(self.ndim) < 0.5) if self.flip else np.zeros(self.ndim, bool)
        sl = (slice(None),) + tuple(slice(a, a + w) for a, w in zip(starts, window))
        out = []
        for arr in (pair.signal, pair.target, pair.weight if self.use_weights else None):
            if arr is None:
                out.append(None)
                continue
            x = arr[sl]
            axes = tuple(1 + i for i in range(self.ndim) if flips[i])
            if axes:
                x = np.flip(x, axes)
            if k:
                x = np.rot90(x, k, axes=(-2, -1))
            out.append(x)
        if self.intensity is not None:
            out[0] = augment_signal(out[0], self.intensity, np.random.default_rng((self.seed, _AUGMENT_STREAM, p)))
        return out

    def _build(self, first: int) -> Batch:
        """The local rows of the global batch whose first patch is ``first``."""
        t0 = time.perf_counter()
        sig = tgt = wgt = None
        for row in range(self.local_batch):
            s, t, w = self._patch(first + self.row_offset + row)
            if sig is None:
                sig = np.empty((self.local_batch, *s.shape), np.float32)
                tgt = np.empty((self.local_batch, *t.shape), np.float32)
                wgt = None if w is None else np.empty((self.local_batch, *w.shape), np.float32)
            sig[row] = s
            tgt[row] = t
            if wgt is not None:
                wgt[row] = w
        batch = Batch(sig, tgt, wgt, first)
        with self._lock:
            self.stats.patches += self.local_batch
            self.stats.produce_seconds += time.perf_counter() - t0
        return batch

    # ---------------------------------------------------------------- threading
    def _producer(self) -> None:
        first = self._produce_from
        try:
            while not self._stop.is_set():
                batch = self._build(first)
                item = self.transfer(batch) if self.transfer is not None else batch
                first += self.batch_size
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # noqa: BLE001 - any failure is handed to the consumer and raised there
            while not self._stop.is_set():
                try:
                    self._queue.put(_Failure(err), timeout=0.1)
                    break
                except queue.Full:
                    continue

    def start(self) -> PatchLoader:
        """Load the first buffer (in this thread, so bad data fails here) and start the producer."""
        if self._started:
            return self
        self._started = True
        needed = self._prepare_window(self.next_patch)
        self._first_buffer = [self._cache[i] for i in needed]
        if self.prefetch > 0:
            self._thread = threading.Thread(target=self._producer, name="patch-loader", daemon=True)
            self._thread.start()
        return self

    def __iter__(self) -> PatchLoader:
        return self.start()

    def __next__(self):
        if not self._started:
            self.start()
        t0 = time.perf_counter()
        if self._thread is None:
            batch = self._build(self.next_patch)
            item = self.transfer(batch) if self.transfer is not None else batch
        else:
            item = self._queue.get()
            if isinstance(item, _Failure):
                self.close()
                raise item.error
        self.stats.wait_seconds += time.perf_counter() - t0
        self.stats.batches_consumed += 1
        self.next_patch += self.batch_size
        return item

    def close(self) -> None:
        """Stop the background threads (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        # ``_stop`` is missing when __init__ failed early; then there is no thread to stop
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    @property
    def patches_per_second(self) -> float:
        """Patches the producer makes per second of its own busy time (its capacity)."""
        s = self.stats
        return s.patches / s.produce_seconds if s.produce_seconds > 0 else math.inf


@dataclass
class _Failure:
    error: BaseException


# --------------------------------------------------------------------------------------------
# fixed patches (validation) and throughput measurement
# --------------------------------------------------------------------------------------------
def sample_patches(
    dataset: PairDataset,
    *,
    patch_shape: Sequence[int],
    n_patches: int,
    seed: int = 0,
    max_images: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A fixed set of patches (no augmentation), spread round-robin over the first images.

    Loads ``min(len(dataset), max_images)`` images one at a time. Returns ``signal``
    ``(N, C_in, *patch_shape)``, ``target`` ``(N, C_out, *patch_shape)`` and ``weight`` or None.

    Raises:
        InputError: an image smaller than the patch.
    """
    patch_shape = tuple(int(s) for s in patch_shape)
    nd = len(patch_shape)
    n_images = min(len(dataset), max_images or len(dataset))
    if n_images == 0:
        raise InputError("the validation dataset is empty")
    rng = np.random.default_rng((seed, _PATCH_STREAM, 0xA11DA7E))
    per_image = [n_patches // n_images + (1 if i < n_patches % n_images else 0) for i in range(n_images)]
    sig, tgt, wgt = [], [], []
    for i in range(n_images):
        if per_image[i] == 0:
            continue
        pair = dataset.load(i)
        shape = pair.spatial_shape
        if len(shape) != nd or any(s < p for s, p in zip(shape, patch_shape)):
            raise InputError(
                f"{dataset.describe(i)}: the image (after transforms) has spatial shape {shape}, smaller than "
                f"the patch shape {patch_shape}"
            )
        for _ in range(per_image[i]):
            starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch_shape)]
            sl = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(starts, patch_shape))
            sig.append(pair.signal[sl])
            tgt.append(pair.target[sl])
            if pair.weight is not None:
                wgt.append(pair.weight[sl])
    weights = np.stack(wgt).astype(np.float32) if wgt and len(wgt) == len(sig) else None
    return np.stack(sig).astype(np.float32), np.stack(tgt).astype(np.float32), weights


def measure_loader(loader: PatchLoader, n_batches: int = 20) -> dict[str, float]:
    """Drain ``n_batches`` from a started loader without training; returns patches/s figures.

    ``patches_per_s``: patches received per wall second by a consumer that does nothing
    else (the loader's deliverable rate, threads included); ``producer_patches_per_s``: the
    producer's rate over its own busy time.
    """
    loader.start()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(loader)
    dt = time.perf_counter() - t0
    return {
        "patches_per_s": n_batches * loader.batch_size / dt if dt > 0 else math.inf,
        "producer_patches_per_s": loader.patches_per_second,
        "seconds": dt,
    }
