"""Which channel(s) of an input file the network gets.

:func:`choose_signal_channels` decides, in this order:

1. channels the user chose (``channels=``, ``--channel``, a manifest's ``channel_signal``):
   by index or OME/ImageJ/CZI name; a wrong one is an error listing the channels;
2. the package's own choice, when it fits the file: the channel names it was trained on
   (``signal_channel_names``) when the file has them, else its ``signal_channels`` (indices
   or names); what was picked is logged (INFO) and returned for the summary;
3. all channels, when the file has exactly as many as the network takes;
4. otherwise an error naming the file's channels and how to choose (``--channel``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from labelfree_jax.core.errors import InputError
from labelfree_jax.imagefiles import Image, select_channels

__all__ = ["choose_signal_channels", "describe_channels"]

log = logging.getLogger(__name__)


def _as_list(channels) -> list[int | str]:
    return [channels] if isinstance(channels, (int, str)) else list(channels)


def _indices(image: Image, channels: Sequence[int | str]) -> list[int]:
    names = image.channel_names or []
    return [names.index(c) if isinstance(c, str) else int(c) for c in channels]


def describe_channels(image: Image, indices: Sequence[int]) -> str:
    """``"1 (Bright)"`` / ``"0, 2"``: channel indices of ``image``, with their names when it has them."""
    names = image.channel_names
    return ", ".join(f"{i} ({names[i]})" if names else str(i) for i in indices)


def _listing(image: Image) -> str:
    return describe_channels(image, range(image.n_channels))


def _where(image: Image) -> str:
    return str(image.path) if image.path is not None else "the image"


def _package_candidates(config) -> list[tuple[str, list[int | str]]]:
    out: list[tuple[str, list[int | str]]] = []
    names = getattr(config, "signal_channel_names", None)
    if names:
        out.append(("the channel names the package was trained on", list(names)))
    chosen = getattr(config, "signal_channels", None)
    if chosen:
        out.append(("the package's signal_channels", list(chosen)))
    return out


def choose_signal_channels(image: Image, config, *, channels=None) -> tuple[Image, str]:
    """The channels of ``image`` to predict from, and a description of the choice (``""`` when none was made).

    Args:
        image: as read, every channel (``(C, ...)``, ``channel_names`` when the file has them).
        config: the :class:`~labelfree_jax.models.config.PackageConfig` (``network.in_channels``,
            ``signal_channel_names``, ``signal_channels``).
        channels: the user's choice (an index, a name, or a sequence of them), or None.

    Returns:
        ``(image with the chosen channels, description such as "1 (Bright)")``.

    Raises:
        InputError: a chosen channel the file lacks, a choice of the wrong count, or a file with
            another number of channels than the network takes and no way to choose (the message
            lists the file's channels and names ``--channel``).
    """
    n_in = int(config.network.in_channels)
    if channels is not None:
        wanted = _as_list(channels)
        picked = select_channels(image, wanted)
        if picked.n_channels != n_in:
            raise InputError(f"{_where(image)}: {picked.n_channels} channel(s) chosen ({wanted}) but the model takes "
                             f"{n_in}")
        return picked, describe_channels(image, _indices(image, wanted))
    for why, wanted in _package_candidates(config):
        if len(wanted) != n_in:
            continue
        try:
            picked = select_channels(image, wanted)
        except InputError:
            continue  # the file lacks them: try the next rule
        text = describe_channels(image, _indices(image, wanted))
        if image.n_channels != n_in:
            log.info("%s: picked signal channel %s of %s (%s)", _where(image), text, _listing(image), why)
        return picked, text
    if image.n_channels == n_in:
        return image, ""
    raise InputError(
        f"{_where(image)}: the file has {image.n_channels} channels ({_listing(image)}) and the model takes {n_in}; "
        f"choose with --channel (index or name, e.g. --channel {image.channel_names[0] if image.channel_names else 0})"
        " or channels="
    )
