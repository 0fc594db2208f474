"""Convert original pytorch_fnet checkpoints (``model.p``) into model packages.

Two checkpoint layouts exist:

* release (2018): ``{"nn_module": "fnet_nn_3d", "nn_kwargs": {...}, "nn_state": state_dict,
  "optimizer_state": ..., "count_iter": int}``
* later: ``{"fnet_model_class": "fnet.fnet_model.Model", "fnet_model_kwargs": {"nn_class":
  "fnet.nn_modules.fnet_nn_3d", "nn_kwargs": {...}, ...}, "nn_state": state_dict, ...}``

Files are read with ``torch.load(weights_only=True)`` (no arbitrary unpickling). The
transform strings of ``train_options.json`` are parsed, never evaluated
(:func:`labelfree_jax.compat.fnet_transforms.parse_fnet_transform`); without them the original's
default, ``fnet.transforms.normalize``, is used for signal and target, with a WARNING. torch is
needed only here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from labelfree_jax.compat.fnet_transforms import parse_fnet_transform
from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.core.schema import read_json
from labelfree_jax.inference.model import Model
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.package import check_variables, save_package, unflatten_variables

__all__ = [
    "FNET_DEFAULT_TRANSFORM",
    "convert_fnet_checkpoint",
    "network_config_from_checkpoint",
    "read_fnet_checkpoint",
    "state_dict_to_variables",
    "transforms_from_train_options",
]

log = logging.getLogger(__name__)

_BN_NAMES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
             "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _to_numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu().float().numpy()
    return np.asarray(t, dtype=np.float32)


def state_dict_to_variables(state_dict: Mapping[str, Any]) -> dict:
    """Map an fnet ``state_dict`` (PyTorch names, NCDHW weights) to Flax variables.

    * ``...convX.weight`` ``(O, I, *k)`` -> ``params/.../convX/kernel`` ``(*k, I, O)``
    * ``...convt.weight`` ``(I, O, *k)`` (ConvTranspose) -> ``(*k, I, O)``
    * BatchNorm ``weight/bias`` -> ``params/.../scale|bias``; ``running_mean/var`` ->
      ``batch_stats/.../mean|var``; ``num_batches_tracked`` is dropped.
    A ``module.`` prefix (DataParallel) is stripped.
    """
    flat: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        key = re.sub(r"^module\.", "", key)
        parts = key.split(".")
        *path, leaf = parts
        if leaf == "num_batches_tracked":
            continue
        layer = path[-1] if path else ""
        array = _to_numpy(value)
        if layer.startswith("bn"):
            if leaf not in _BN_NAMES:
                raise ConfigError(f"unexpected BatchNorm tensor {key}")
            collection, name = _BN_NAMES[leaf]
            flat["/".join([collection, *path, name])] = array
        elif leaf == "weight":
            n = array.ndim - 2
            if layer == "convt":
                perm = tuple(range(2, 2 + n)) + (0, 1)
            else:
                perm = tuple(range(2, 2 + n)) + (1, 0)
            flat["/".join(["params", *path, "kernel"])] = np.ascontiguousarray(array.transpose(perm))
        elif leaf == "bias":
            flat["/".join(["params", *path, "bias"])] = array
        else:
            raise ConfigError(f"unexpected tensor {key} in the fnet state dict")
    return flat


def network_config_from_checkpoint(checkpoint: Mapping[str, Any], flat: Mapping[str, np.ndarray]) -> NetworkConfig:
    """Network hyper-parameters from either checkpoint layout (ndim from the weights)."""
    if "nn_kwargs" in checkpoint:
        kwargs = dict(checkpoint.get("nn_kwargs") or {})
    elif "fnet_model_kwargs" in checkpoint:
        kwargs = dict((checkpoint["fnet_model_kwargs"] or {}).get("nn_kwargs") or {})
    else:
        raise ConfigError("neither nn_kwargs nor fnet_model_kwargs in the checkpoint")
    unknown = set(kwargs) - {"depth", "mult_chan", "in_channels", "out_channels"}
    if unknown:
        raise ConfigError(f"unsupported network arguments {sorted(unknown)}")
    out_kernel = flat.get("params/conv_out/kernel")
    first_kernel = flat.get("params/net_recurse/sub_2conv_more/conv1/kernel")
    if out_kernel is None or first_kernel is None:
        raise ConfigError("the state dict is not an fnet U-Net (no conv_out / net_recurse.sub_2conv_more.conv1)")
    ndim = out_kernel.ndim - 2
    depth = 0
    while f"params/net_recurse/{'sub_u/' * depth}conv_down/kernel" in flat:
        depth += 1
    in_channels = int(first_kernel.shape[-2])
    first = int(first_kernel.shape[-1])
    mult_chan = int(kwargs.get("mult_chan", first // in_channels))
    config = NetworkConfig(
        ndim=ndim,
        depth=depth,
        mult_chan=mult_chan,
        in_channels=in_channels,
        out_channels=int(out_kernel.shape[-1]),
        base_channels=None if in_channels * mult_chan == first else first,
    )
    if "depth" in kwargs and int(kwargs["depth"]) != depth:
        raise ConfigError(f"nn_kwargs says depth {kwargs['depth']} but the weights have depth {depth}")
    return config


def read_fnet_checkpoint(path: str | Path) -> tuple[NetworkConfig, dict, dict]:
    """Read ``model.p``; returns (network config, Flax variables, extra info such as count_iter)."""
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ConfigError("converting pytorch_fnet checkpoints needs torch: pip install 'labelfree-jax[torch]'") from err
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (UnpicklingError, RuntimeError, EOFError)
        raise InputError(f"{path}: not a readable pytorch_fnet checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, Mapping) or "nn_state" not in checkpoint:
        raise InputError(f"{path}: not a pytorch_fnet checkpoint (no 'nn_state' key)")
    try:
        flat = state_dict_to_variables(checkpoint["nn_state"])
        network = network_config_from_checkpoint(checkpoint, flat)
        check_variables(flat, network, str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    info = {k: checkpoint[k] for k in ("count_iter", "nn_module", "fnet_model_class") if k in checkpoint}
    return network, unflatten_variables(flat), info


#: The original fnet's default transforms (``scripts/train_model.py``: ``--transform_signal`` and
#: ``--transform_target`` both default to ``fnet.transforms.normalize``, a z-score per image).
FNET_DEFAULT_TRANSFORM = "fnet.transforms.normalize"


def _default_transforms(role: str, why: str) -> tuple:
    log.warning(
        "%s: using the original fnet's default %s transforms (%s: z-score per image); if the model was trained "
        "otherwise, pass its train_options.json", why, role, FNET_DEFAULT_TRANSFORM,
    )
    return tuple(parse_fnet_transform(FNET_DEFAULT_TRANSFORM))


def transforms_from_train_options(path: str | Path | None) -> dict[str, Any]:
    """``transform_signal`` / ``transform_target`` from train_options.json, as typed transforms.

    Without ``path``, or for a field the file does not have (absent or null), the original fnet's
    default is used (``fnet.transforms.normalize``, a z-score per image, for signal and target)
    and a WARNING says so. An empty list is kept as "no transforms".

    Raises:
        ConfigError: the file cannot be read, is not a JSON object, or holds a transform
            string that is not supported (the message names the file).
    """
    if path is None:
        why = "no train_options.json given"
        return {"signal_transforms": _default_transforms("signal", why),
                "target_transforms": _default_transforms("target", why)}
    path = Path(path)
    options = read_json(path, what="train options")
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: train options must be a JSON object; got {type(options).__name__}")

    def parse(key: str, role: str) -> tuple:
        value = options.get(key)
        if value is None:
            return _default_transforms(role, f"{path} has no {key}")
        items = value if isinstance(value, list) else [value]
        steps: list = []
        for item in items:
            if not isinstance(item, str):
                raise ConfigError(f"{path}: transform entries must be strings, got {item!r}")
            steps.extend(parse_fnet_transform(item))
        return tuple(steps)

    try:
        return {
            "signal_transforms": parse("transform_signal", "signal"),
            "target_transforms": parse("transform_target", "target"),
        }
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def convert_fnet_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    *,
    train_options: str | Path | None = None,
    name: str | None = None,
) -> Model:
    """Convert ``model.p`` (+ optional ``train_options.json``) into a package in ``out_dir``.

    The package's transforms come from ``train_options`` (:func:`transforms_from_train_options`;
    the original fnet's default z-score normalisation, with a WARNING, where it says nothing).

    Raises:
        InputError: an unreadable or non-fnet checkpoint file.
        ConfigError: unsupported network arguments or transform strings (messages name the file).
    """
    network, variables, info = read_fnet_checkpoint(checkpoint_path)
    transforms = transforms_from_train_options(train_options or None)
    config = PackageConfig(
        name=name or Path(checkpoint_path).resolve().parent.name or "fnet",
        description=f"converted from pytorch_fnet checkpoint {Path(checkpoint_path).name}",
        network=network,
        training={"source": "pytorch_fnet", **{k: v for k, v in info.items() if isinstance(v, (int, str))}},
        **transforms,
    )
    save_package(out_dir, config, variables)
    return Model(config, variables, source=str(out_dir))
