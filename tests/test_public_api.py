"""The public API of the package root: lazy, warning-free for current names, deprecated aliases for moved ones."""

import subprocess
import sys
import warnings

import pytest

import labelfree_jax

CURRENT = ["load_package", "save_package", "Model", "PackageConfig", "NetworkConfig", "read_image",
           "write_ome_tiff", "predict_array", "LabelfreeError", "InputError", "ConfigError", "zoo", "datasets",
           "imagefiles", "__version__"]


@pytest.mark.parametrize("name", CURRENT)
def test_current_names_resolve_without_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(labelfree_jax, name) is not None


def test_the_readme_example_names():
    from labelfree_jax import imagefiles, zoo

    assert callable(zoo.load) and callable(imagefiles.read_image) and callable(imagefiles.write_ome_tiff)
    assert labelfree_jax.load_package is labelfree_jax.inference.model.load_package
    assert callable(labelfree_jax.Model.predict) and callable(labelfree_jax.Model.apply)


@pytest.mark.parametrize(("old", "attribute"), [
    ("io", "read_image"), ("io", "write_ome_tiff"), ("predict", "predict_array"), ("package", "load_package"),
    ("train", "train"), ("train_config", "RunConfig"), ("data", "PatchLoader"), ("metrics", "pearson_r"),
    ("plots", "plot_loss_curve"), ("report", "write_report"), ("tiling", "plan_tiles"), ("config", "PackageConfig"),
    ("model", "build_network"), ("ops", "conv_same_reference"), ("convert", "convert_fnet_checkpoint"), ("errors", "InputError"),
    ("allen_data", "download_file"), ("synthetic", "make_pair"),
])
def test_moved_modules_still_resolve_with_a_deprecation_warning(old, attribute):
    with pytest.warns(DeprecationWarning, match=f"labelfree_jax.{old} moved to"):
        module = getattr(labelfree_jax, old)
    assert hasattr(module, attribute)


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError):
        labelfree_jax.no_such_thing  # noqa: B018


def test_importing_the_package_imports_no_jax():
    code = "import sys, labelfree_jax; from labelfree_jax import imagefiles; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
