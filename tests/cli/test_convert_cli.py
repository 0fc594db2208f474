"""``labelfree convert-fnet`` without train_options.json (issue 13): the original fnet's default normalisation.

The converted package predicts what the original pytorch_fnet pipeline predicts: z-score the
signal per image (``fnet.transforms.normalize``), run the network, output in z-score units.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from labelfree_jax.cli import main as cli_main
from labelfree_jax.inference.model import load_package
from labelfree_jax.transforms import Normalize, Resize
from tests.torch_fnet import Net, randomize_bn_stats, weights_init

KWARGS = {"depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}


def _checkpoint(path):
    torch.manual_seed(0)
    net = Net(ndim=3, **KWARGS)
    net.apply(weights_init)
    randomize_bn_stats(net, torch.Generator().manual_seed(2))
    net.eval()
    torch.save({"nn_module": "fnet_nn_3d", "nn_kwargs": KWARGS, "nn_state": net.state_dict(), "count_iter": 7}, path)
    return net


def _fnet_normalize(x: np.ndarray) -> np.ndarray:
    """The original ``fnet.transforms.normalize``: ``(img - img.mean()) / img.std()`` (float64 statistics)."""
    x = x.astype(np.float64)
    return ((x - x.mean()) / x.std()).astype(np.float32)


def test_convert_without_train_options_defaults_to_fnet_normalize(tmp_path, caplog, capsys):
    net = _checkpoint(tmp_path / "model.p")
    with caplog.at_level(logging.WARNING, logger="labelfree_jax"):
        assert cli_main(["convert-fnet", str(tmp_path / "model.p"), str(tmp_path / "pkg")]) == 0
    assert "wrote" in capsys.readouterr().out
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for role in ("signal", "target"):
        assert any(f"original fnet's default {role} transforms (fnet.transforms.normalize: z-score per image)" in m
                   and "no train_options.json given" in m for m in warned), warned
    model = load_package(tmp_path / "pkg")
    assert model.config.signal_transforms == (Normalize(),) and model.config.target_transforms == (Normalize(),)
    # raw camera-like input (not z-scored): the package's prediction is the original pipeline's
    x = (1500 + 200 * np.random.default_rng(0).standard_normal((1, 8, 16, 20))).astype(np.float32)
    prediction = model.predict(x, tile_shape=(8, 16, 20), progress=False)
    with torch.no_grad():
        expected = net(torch.from_numpy(_fnet_normalize(x)[None]))[0].numpy()
    assert prediction.shape == expected.shape == (1, 8, 16, 20)
    assert np.max(np.abs(prediction - expected)) <= 1e-4


def test_train_options_without_transform_fields(tmp_path, caplog):
    _checkpoint(tmp_path / "model.p")
    options = tmp_path / "train_options.json"
    # only the signal transforms given: the target gets the default, with a warning naming the file
    options.write_text(json.dumps({"nn_module": "fnet_nn_3d",
                                   "transform_signal": ["fnet.transforms.Resizer((1, 0.5, 0.5))"]}))
    with caplog.at_level(logging.WARNING, logger="labelfree_jax"):
        assert cli_main(["convert-fnet", str(tmp_path / "model.p"), str(options), str(tmp_path / "pkg")]) == 0
    config = load_package(tmp_path / "pkg").config
    assert config.signal_transforms == (Resize(zoom=(1.0, 0.5, 0.5)),) and config.target_transforms == (Normalize(),)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m for m in warned if "default" in m] == [
        (f"{options} has no transform_target: using the original fnet's default target transforms "
        f"(fnet.transforms.normalize: z-score per image); if the model was trained otherwise, pass its "
        f"train_options.json")]
    # an explicit empty list means no transforms, and is kept
    options.write_text(json.dumps({"transform_signal": [], "transform_target": []}))
    caplog.clear()
    assert cli_main(["convert-fnet", str(tmp_path / "model.p"), str(options), str(tmp_path / "pkg2")]) == 0
    config = load_package(tmp_path / "pkg2").config
    assert config.signal_transforms == () and config.target_transforms == ()
    assert not [r for r in caplog.records if "default" in r.getMessage()]
