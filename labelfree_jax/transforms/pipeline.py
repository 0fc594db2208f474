"""The :class:`Pipeline`: an ordered list of transforms, applied first to last and inverted last to first.

A pipeline is plain JSON (``Pipeline.to_json`` / ``Pipeline.from_json``: a list of transform
dicts). :meth:`Pipeline.apply` returns a :class:`PipelineState` that :meth:`Pipeline.invert`
needs to bring an output (e.g. a prediction) back onto the input's grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.core.schema import StrictModel
from labelfree_jax.transforms.base import InverseInfo, spatial_names, validate_image_array
from labelfree_jax.transforms.geometry import Resize
from labelfree_jax.transforms.registry import Transform, transform_from_dict

__all__ = ["Pipeline", "PipelineState"]


@dataclass(frozen=True)
class PipelineState:
    """What :meth:`Pipeline.invert` needs: one :class:`InverseInfo` per step, in order.

    Attributes:
        infos: the steps' inverse information.
        input_shape: full shape ``(C, *spatial)`` of the pipeline's input.
        output_shape: full shape of the pipeline's output.
    """

    infos: tuple[InverseInfo, ...]
    input_shape: tuple[int, ...] = field(default=())
    output_shape: tuple[int, ...] = field(default=())


class Pipeline(StrictModel):
    """An ordered list of transforms, applied first to last and inverted last to first.

    ``Pipeline.from_json([{"name": "normalize"}, {"name": "pad_to_multiple"}])`` builds
    one; ``to_json()`` gives the same list back. (Original pytorch_fnet transform strings:
    :func:`labelfree_jax.compat.fnet_transforms.pipeline_from_fnet`.)
    """

    steps: tuple[Transform, ...] = ()

    @classmethod
    def from_json(cls, items: Sequence[Mapping[str, Any]] | None) -> Pipeline:
        """Build from a list of transform dicts (strict; errors name the step index)."""
        if items is None:
            return cls()
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise ConfigError(f"a transform pipeline must be a list of transform dicts; got {items!r}")
        steps = []
        for i, d in enumerate(items):
            try:
                steps.append(transform_from_dict(d))
            except ConfigError as err:
                raise ConfigError(f"transform #{i}: {err}") from None
        return cls(steps=tuple(steps))

    def to_json(self) -> list[dict[str, Any]]:
        """List of JSON-ready transform dicts (``from_json`` of it gives an equal pipeline)."""
        return [s.to_dict() for s in self.steps]

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def is_geometric(self) -> bool:
        """True when any step changes the grid."""
        return any(s.is_geometric for s in self.steps)

    def apply(
        self, x: np.ndarray, *, pixel_sizes: Mapping[str, float] | None = None
    ) -> tuple[np.ndarray, PipelineState]:
        """Apply every step to ``x`` (C, Z, Y, X) / (C, Y, X); returns float32 and the state.

        ``pixel_sizes`` (µm, of ``x``) is passed to the steps; after a :class:`Resize` the
        pixel sizes passed on are scaled by its factors.
        """
        arr = validate_image_array(x, what="pipeline input")
        input_shape = tuple(arr.shape)
        infos = []
        ps = dict(pixel_sizes) if pixel_sizes is not None else None
        for step in self.steps:
            arr, info = step._apply(arr, ps)
            infos.append(info)
            if isinstance(step, Resize) and ps is not None:
                names = spatial_names(arr.ndim - 1)
                factors = [o / i for o, i in zip(info.shape_out, info.shape_in)]
                ps = {**ps, **{n: ps[n] / f for n, f in zip(names, factors) if n in ps}}
        return arr.astype(np.float32, copy=False), PipelineState(tuple(infos), input_shape, tuple(arr.shape))

    def invert(self, y: np.ndarray, state: PipelineState, *, geometric_only: bool = False) -> np.ndarray:
        """Undo the steps in reverse order.

        Args:
            y: array (C', *spatial of the pipeline output); C' may differ from the input's
                channel count when ``geometric_only`` (or when there are no intensity steps).
            state: from :meth:`apply`.
            geometric_only: skip intensity inverses (normalize, clip): brings a prediction
                back to the input grid without un-normalizing it with the input statistics.

        Returns:
            float32 array (C', *spatial of the pipeline input).
        """
        if not isinstance(state, PipelineState) or len(state.infos) != len(self.steps):
            raise InputError(
                f"pipeline state does not belong to this pipeline ({len(self.steps)} steps; state has "
                f"{len(getattr(state, 'infos', ()))})"
            )
        out = y
        for step, info in zip(reversed(self.steps), reversed(state.infos)):
            if geometric_only and not step.is_geometric:
                continue
            out = step.invert(out, info)
        return np.asarray(out, dtype=np.float32)

    def output_shape(
        self, spatial_shape: Sequence[int], *, pixel_sizes: Mapping[str, float] | None = None
    ) -> tuple[int, ...]:
        """Spatial shape after the pipeline, for an input of spatial shape ``spatial_shape``."""
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) not in (2, 3):
            raise InputError(f"spatial shape must have 2 or 3 axes; got {shape}")
        ps = dict(pixel_sizes) if pixel_sizes is not None else None
        for step in self.steps:
            new = step.output_spatial_shape(shape, pixel_sizes=ps)
            if isinstance(step, Resize) and ps is not None:
                names = spatial_names(len(shape))
                ps = {**ps, **{n: ps[n] * i / o for n, i, o in zip(names, shape, new) if n in ps}}
            shape = new
        return shape
