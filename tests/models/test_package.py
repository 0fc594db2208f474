"""Model packages: save -> load -> same outputs; strict validation of what is loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from labelfree_jax.core.errors import ConfigError, InputError, IntegrityError
from labelfree_jax.inference.model import Model, load_package
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.fnet import init_variables
from labelfree_jax.models.package import CONFIG_FILE, WEIGHTS_FILE, flatten_variables, save_package

NET = NetworkConfig(ndim=3, depth=2, mult_chan=4)


@pytest.fixture(scope="module")
def small_model() -> Model:
    return Model(PackageConfig(name="tiny", network=NET), init_variables(NET, 0))


def test_save_load_gives_identical_outputs(tmp_path, small_model):
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 12)).astype(np.float32)
    save_package(tmp_path / "pkg", small_model.config, small_model.variables, model_card="# tiny\n")
    loaded = load_package(tmp_path / "pkg")
    assert loaded.config == small_model.config
    np.testing.assert_array_equal(loaded.apply(x), small_model.apply(x))
    assert (tmp_path / "pkg" / "README.md").read_text() == "# tiny\n"
    assert not [p for p in (tmp_path / "pkg").iterdir() if ".tmp" in p.name]


def test_apply_checks_shape_and_channels(small_model):
    with pytest.raises(InputError, match="multiples of 4"):
        small_model.apply(np.zeros((1, 8, 10, 12), np.float32))
    with pytest.raises(InputError, match="takes 1 channel"):
        small_model.apply(np.zeros((2, 8, 8, 8), np.float32))
    with pytest.raises(InputError, match="C, Z, Y, X"):
        small_model.apply(np.zeros((8, 8), np.float32))


def test_config_is_strict_json(tmp_path, small_model):
    pkg = save_package(tmp_path / "pkg", small_model.config, small_model.variables)
    cfg = json.loads((pkg / CONFIG_FILE).read_text())
    cfg["network"]["evil"] = "__import__('os')"
    (pkg / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config.json: invalid PackageConfig: network.evil"):
        load_package(pkg)
    (pkg / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_package(pkg)


def test_weights_are_checked_against_the_config(tmp_path, small_model):
    pkg = save_package(tmp_path / "pkg", small_model.config, small_model.variables)
    flat = load_file(str(pkg / WEIGHTS_FILE))
    name = "params/conv_out/kernel"
    flat[name] = np.zeros((3, 3, 3, 4, 2), np.float32)
    save_file(flat, str(pkg / WEIGHTS_FILE))
    with pytest.raises(IntegrityError, match="conv_out/kernel has shape"):
        load_package(pkg)
    del flat[name]
    save_file(flat, str(pkg / WEIGHTS_FILE))
    with pytest.raises(IntegrityError, match="missing"):
        load_package(pkg)
    (pkg / WEIGHTS_FILE).write_bytes(b"\x80\x04garbage pickle-looking bytes")
    with pytest.raises(IntegrityError, match="unreadable safetensors"):
        load_package(pkg)


def test_missing_package_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not a model package folder"):
        load_package(tmp_path / "nope")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / CONFIG_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="missing model.safetensors"):
        load_package(tmp_path / "p")


def test_flatten_names_are_stable(small_model):
    flat = flatten_variables(small_model.variables)
    assert "params/net_recurse/sub_u/conv_down/kernel" in flat  # depth 2: sub_u has depth 1
    assert "params/net_recurse/sub_u/sub_u/conv_down/kernel" not in flat  # the bottom level has no down conv
    assert "params/net_recurse/conv_down/kernel" in flat
    assert "batch_stats/net_recurse/sub_2conv_more/bn1/mean" in flat
    assert all(v.dtype == np.float32 for v in flat.values())


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("params/conv_out/kernel", lambda a: a.astype(np.int32), "dtype int32; weights must be floating point"),
        ("params/conv_out/bias", lambda a: a.astype(bool), "dtype bool"),
        ("batch_stats/net_recurse/sub_2conv_more/bn1/var", lambda a: a - 2.0, "running variance .* negative"),
    ],
)
def test_integer_weights_and_negative_variances_are_refused_at_load(tmp_path, small_model, name, value, match):
    pkg = save_package(tmp_path / "pkg", small_model.config, small_model.variables)
    flat = load_file(str(pkg / WEIGHTS_FILE))
    flat[name] = np.ascontiguousarray(value(flat[name]))
    save_file(flat, str(pkg / WEIGHTS_FILE))
    with pytest.raises(IntegrityError, match=match) as err:
        load_package(pkg)
    assert str(pkg / WEIGHTS_FILE) in str(err.value) and name in str(err.value)
