"""Deep ensembles: mean and SD across members equal numpy over the members' own predictions;
mismatched members and bad ensemble folders are refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from labelfree_jax.core.errors import ConfigError, InputError, IntegrityError
from labelfree_jax.evaluation.calibration import calibration_metrics
from labelfree_jax.imagefiles import Image
from labelfree_jax.inference.ensemble import (
    ENSEMBLE_FILE,
    Ensemble,
    calibration_against,
    is_ensemble_folder,
    load_ensemble,
    predict_image_with_sd,
    write_ensemble,
)
from labelfree_jax.inference.model import Model, load_package
from labelfree_jax.models.config import NetworkConfig, PackageConfig
from labelfree_jax.models.package import WEIGHTS_FILE, save_package
from labelfree_jax.transforms import Clip, Normalize
from tests.inference.test_predict import he_variables

NET = NetworkConfig(ndim=2, depth=1, mult_chan=2, out_channels=2)
PIXELS = {"y": 0.5, "x": 0.5}


def tiny_config(**changes) -> PackageConfig:
    base = {"name": "tiny2d", "network": NET, "signal_transforms": (Normalize(),),
            "target_transforms": (Normalize(),), "target_channels": ("DNA", "Membrane"), "pixel_size_um": PIXELS}
    return PackageConfig(**{**base, **changes})


def tiny_model(seed: int, **changes) -> Model:
    config = tiny_config(**changes)
    return Model(config, he_variables(config.network, seed=seed), source=f"seed{seed}")


@pytest.fixture(scope="module")
def members() -> list[Model]:
    return [tiny_model(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(5).random((1, 37, 29)) * 1000 + 50).astype(np.float32)


@pytest.fixture(scope="module")
def packages(tmp_path_factory, members) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [save_package(root / f"seed{k}", m.config, m.variables) for k, m in enumerate(members)]


@pytest.mark.parametrize(("ddof", "tta"), [(1, False), (0, True)])
def test_mean_and_sd_equal_numpy_over_members(members, image, ddof, tta):
    options = {"pixel_sizes": PIXELS, "tta": tta, "progress": False}
    each = np.stack([m.predict(image, **options) for m in members])
    mean, sd = Ensemble(members, ddof=ddof).predict(image, **options)
    assert mean.shape == sd.shape == (2, 37, 29) and mean.dtype == sd.dtype == np.float32
    np.testing.assert_allclose(mean, each.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd, each.std(axis=0, ddof=ddof), rtol=1e-4, atol=1e-6)
    assert sd.min() >= 0 and float(sd.mean()) > 1e-3  # members differ


def test_input_without_channel_axis_and_warnings_reported_once(members, image):
    warnings: list[str] = []
    mean, _ = Ensemble(members[:2]).predict(image[0], warnings=warnings, progress=False)  # no pixel sizes
    expected = np.mean([m.predict(image, pixel_sizes=None, progress=False) for m in members[:2]], axis=0)
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-6)
    assert warnings and len(warnings) == len(set(warnings))
    assert any("pixel size" in w for w in warnings)


def test_predict_image_with_sd_keeps_the_image_layout(members, image):
    ensemble = Ensemble(members)
    img = Image(data=image[:, np.newaxis], axes="CZYX", pixel_sizes={"z": 1.0, **PIXELS})  # one z-plane, 2D model
    mean, sd = predict_image_with_sd(ensemble, img, progress=False)
    assert mean.shape == sd.shape == (2, 1, 37, 29)
    ref_mean, ref_sd = ensemble.predict(image, pixel_sizes=PIXELS, progress=False)
    np.testing.assert_array_equal(mean[:, 0], ref_mean)
    np.testing.assert_array_equal(sd[:, 0], ref_sd)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"target_transforms": (Normalize(), Clip(low=-3.0, high=3.0))}, "target_transforms"),
        ({"network": NetworkConfig(ndim=2, depth=1, mult_chan=2, out_channels=1), "target_channels": ("DNA",)},
         "network.out_channels"),
        ({"pixel_size_um": {"y": 0.25, "x": 0.25}}, "pixel_size_um"),
        ({"target_channels": ("DNA", "Actin")}, "target_channels"),
    ],
)
def test_mismatched_members_are_refused_in_one_line(members, changes, field):
    other = Model(tiny_config(**changes), members[0].variables if "network" not in changes
                  else he_variables(changes["network"]), source="other")
    with pytest.raises(ConfigError) as info:
        Ensemble([members[0], other])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"ensemble members differ in {field}: member 0 (seed0) has ")
    assert "member 1 (other) has" in message


def test_members_may_differ_in_architecture(members, image):
    deeper = NetworkConfig(ndim=2, depth=2, mult_chan=3, out_channels=2)
    other = Model(tiny_config(network=deeper), he_variables(deeper, seed=7), source="deeper")
    mean, sd = Ensemble([members[0], other]).predict(image, pixel_sizes=PIXELS, progress=False)
    a = members[0].predict(image, pixel_sizes=PIXELS, progress=False)
    b = other.predict(image, pixel_sizes=PIXELS, progress=False)
    np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd, np.abs(a - b) / np.sqrt(2), rtol=1e-4, atol=1e-6)  # ddof=1, N=2


def test_fewer_than_two_members_and_working_grid_are_refused(members, image):
    with pytest.raises(ConfigError, match="at least 2 members, got 1"):
        Ensemble(members[:1])
    with pytest.raises(ConfigError, match="ddof must be 0 or 1"):
        Ensemble(members, ddof=2)
    with pytest.raises(InputError, match="return_working_grid"):
        Ensemble(members).predict(image, return_working_grid=True)


def test_ensemble_folder_round_trip(tmp_path, packages, members, image):
    folder = tmp_path / "ens"
    path = write_ensemble(folder, packages, name="dna-ensemble", ddof=0)
    spec = json.loads(path.read_text())
    assert spec["name"] == "dna-ensemble" and spec["ddof"] == 0
    for k, member in enumerate(spec["members"]):  # relative to the folder, so both move together
        assert not Path(member["path"]).is_absolute()
        assert (folder / member["path"]).resolve() == packages[k].resolve()
    assert is_ensemble_folder(folder) and not is_ensemble_folder(packages[0])
    ensemble = load_ensemble(folder)
    assert len(ensemble) == 3 and ensemble.ddof == 0 and ensemble.config.name == "dna-ensemble"
    assert ensemble.source == str(folder)
    mean, sd = ensemble.predict(image, pixel_sizes=PIXELS, progress=False)
    each = np.stack([load_package(p).predict(image, pixel_sizes=PIXELS, progress=False) for p in packages])
    np.testing.assert_allclose(mean, each.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd, each.std(0, ddof=0), rtol=1e-4, atol=1e-6)
    prov = ensemble.provenance("sd")
    assert prov["ensemble_members"] == 3 and prov["ensemble_ddof"] == 0
    assert "standard deviation across 3 ensemble members (ddof=0)" in prov["prediction_kind"]
    assert prov["ensemble_member_revisions"].count("sha256:") == 3


def test_changed_member_weights_are_refused(tmp_path, members):
    pkgs = [save_package(tmp_path / f"m{k}", m.config, m.variables) for k, m in enumerate(members[:2])]
    write_ensemble(tmp_path / "ens", pkgs)
    weights = pkgs[1] / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(IntegrityError, match=r"member 1 .* has sha256 [0-9a-f]{64}, the ensemble records"):
        load_ensemble(tmp_path / "ens")


def test_strict_ensemble_schema(tmp_path, packages):
    folder = tmp_path / "ens"
    spec = json.loads(write_ensemble(folder, packages[:2]).read_text())
    for bad, message in [
        ({**spec, "extra": 1}, "extra"),
        ({**spec, "members": spec["members"][:1]}, "members"),
        ({**spec, "members": [{**spec["members"][0], "sha256": "abc"}, spec["members"][1]]}, "sha256"),
        ({**spec, "ddof": 2}, "ddof"),
    ]:
        (folder / ENSEMBLE_FILE).write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message) as info:
            load_ensemble(folder)
        assert str(info.value).startswith(str(folder / ENSEMBLE_FILE)) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not an ensemble folder"):
        load_ensemble(tmp_path)


def test_write_ensemble_refuses_mismatched_packages(tmp_path, packages, members):
    other = tiny_model(3, target_transforms=())
    odd = save_package(tmp_path / "odd", other.config, other.variables)
    with pytest.raises(ConfigError, match="ensemble members differ in target_transforms"):
        write_ensemble(tmp_path / "ens", [packages[0], odd])
    assert not (tmp_path / "ens" / ENSEMBLE_FILE).exists()
    with pytest.raises(ConfigError, match="at least 2 member packages"):
        write_ensemble(tmp_path / "ens", packages[:1])


def test_calibration_against_a_target_in_file_units(members, image):
    ensemble = Ensemble(members)
    mean, sd = ensemble.predict(image, pixel_sizes=PIXELS, progress=False)
    target = np.random.default_rng(9).random((2, 37, 29)) * 500 + 20  # file units
    z = (target - target.mean(axis=(1, 2), keepdims=True)) / target.std(axis=(1, 2), keepdims=True)
    got = calibration_against(ensemble, mean, sd, target)
    expected = calibration_metrics(mean, z, sd)
    assert got.keys() == expected.keys()
    for key in expected:  # a pixel on an interval's edge may fall either way in float32 (1/2146 each)
        tolerance = {"abs": 1e-3} if key.startswith("coverage") else {"rel": 1e-4, "abs": 1e-6}
        assert got[key] == pytest.approx(expected[key], **tolerance)
