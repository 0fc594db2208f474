"""Converting original pytorch_fnet checkpoints (both layouts) and transform strings."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from labelfree_jax.cli import main as cli_main
from labelfree_jax.compat.convert import convert_fnet_checkpoint, read_fnet_checkpoint
from labelfree_jax.core.errors import ConfigError, InputError
from labelfree_jax.inference.model import load_package
from labelfree_jax.transforms import Normalize, Resize
from tests.torch_fnet import Net, randomize_bn_stats, weights_init


def _torch_net(ndim=3, depth=2, mult_chan=4, in_channels=1, out_channels=1):
    torch.manual_seed(0)
    net = Net(depth=depth, mult_chan=mult_chan, in_channels=in_channels, out_channels=out_channels, ndim=ndim)
    net.apply(weights_init)
    randomize_bn_stats(net, torch.Generator().manual_seed(2))
    return net.eval()


def _release_checkpoint(net, kwargs):
    return {"nn_module": "fnet_nn_3d", "nn_kwargs": kwargs, "nn_state": net.state_dict(),
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.001, "betas": (0.5, 0.999)}]},
            "count_iter": 50000}


def _later_checkpoint(net, kwargs):
    return {"fnet_model_class": "fnet.fnet_model.Model",
            "fnet_model_kwargs": {"nn_class": "fnet.nn_modules.fnet_nn_3d", "nn_kwargs": kwargs,
                                  "lr": 0.001, "betas": (0.5, 0.999)},
            "nn_state": net.state_dict(), "count_iter": 1234}


@pytest.mark.parametrize("layout", [_release_checkpoint, _later_checkpoint])
def test_both_checkpoint_layouts_convert_and_match_pytorch(tmp_path, layout):
    kwargs = {"depth": 2, "mult_chan": 4, "in_channels": 1, "out_channels": 1}
    net = _torch_net(**kwargs)
    torch.save(layout(net, kwargs), tmp_path / "model.p")
    options = {"transform_signal": ["fnet.transforms.normalize", "fnet.transforms.Resizer((1, 0.37241, 0.37241))"],
               "transform_target": ["fnet.transforms.normalize"]}
    (tmp_path / "train_options.json").write_text(json.dumps(options))
    model = convert_fnet_checkpoint(tmp_path / "model.p", tmp_path / "pkg", train_options=tmp_path / "train_options.json")
    loaded = load_package(tmp_path / "pkg")
    assert loaded.config.network.depth == 2 and loaded.config.network.first_channels == 4
    assert loaded.config.signal_transforms == (Normalize(), Resize(zoom=(1, 0.37241, 0.37241)))
    assert loaded.config.target_transforms == (Normalize(),)
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 20)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x[None]))[0].numpy()
    assert np.max(np.abs(loaded.apply(x) - expected)) <= 1e-4
    np.testing.assert_array_equal(model.apply(x), loaded.apply(x))


def test_dataparallel_prefix_and_2d(tmp_path):
    net = _torch_net(ndim=2, depth=3, mult_chan=2, in_channels=3, out_channels=2)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"nn_module": "fnet_nn_2d", "nn_kwargs": {"depth": 3, "mult_chan": 2, "in_channels": 3,
                                                          "out_channels": 2}, "nn_state": state}, tmp_path / "m.p")
    network, _, info = read_fnet_checkpoint(tmp_path / "m.p")
    assert (network.ndim, network.depth, network.in_channels, network.out_channels) == (2, 3, 3, 2)
    assert info["nn_module"] == "fnet_nn_2d"


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused_not_executed(tmp_path, capsys):
    path = tmp_path / "model.p"
    torch.save({"nn_state": {}, "payload": _Evil()}, path)
    with pytest.raises(InputError, match="model.p: not a readable pytorch_fnet checkpoint"):
        read_fnet_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps({"nn_state": 1}))
    with pytest.raises(InputError, match="model.p"):
        read_fnet_checkpoint(path)


def test_checkpoint_that_is_not_fnet(tmp_path):
    torch.save({"nn_module": "x", "nn_kwargs": {}, "nn_state": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "m.p")
    with pytest.raises(ConfigError, match="m.p"):
        read_fnet_checkpoint(tmp_path / "m.p")
    torch.save({"weights": 1}, tmp_path / "n.p")
    with pytest.raises(InputError, match="no 'nn_state' key"):
        read_fnet_checkpoint(tmp_path / "n.p")


def test_bad_transform_string_is_rejected(tmp_path):
    net = _torch_net()
    torch.save(_release_checkpoint(net, {}), tmp_path / "model.p")
    (tmp_path / "opts.json").write_text(json.dumps({"transform_signal": ["__import__('os').system('touch pwned')"]}))
    with pytest.raises(ConfigError, match="opts.json"):
        convert_fnet_checkpoint(tmp_path / "model.p", tmp_path / "pkg", train_options=tmp_path / "opts.json")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pkg" / "config.json").exists()


def test_cli_convert_fnet(tmp_path, capsys):
    net = _torch_net()
    torch.save(_release_checkpoint(net, {"depth": 2, "mult_chan": 4}), tmp_path / "model.p")
    assert cli_main(["convert-fnet", str(tmp_path / "model.p"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["convert-fnet", str(tmp_path / "missing.p"), str(tmp_path / "o2")]) == 1
    assert "missing.p: no such checkpoint file" in capsys.readouterr().err
