"""Tests for labelfree_jax.compat.fnet_transforms: the original pytorch_fnet transform strings (parsed, never run)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from labelfree_jax.compat.fnet_transforms import parse_fnet_transform, pipeline_from_fnet
from labelfree_jax.core.errors import ConfigError
from labelfree_jax.transforms import Clip, CropToMultiple, Normalize, NormAroundCenter, PadToMultiple, Resize


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(3.0, 2.0, size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("fnet.transforms.normalize", [Normalize()]),
        ("fnet.transforms.norm_around_center", [NormAroundCenter()]),
        ("fnet.transforms.Resizer((1, 0.37241, 0.37241))", [Resize(zoom=(1.0, 0.37241, 0.37241))]),
        ("fnet.transforms.Resizer([1, 0.5931, 0.5931])", [Resize(zoom=(1.0, 0.5931, 0.5931))]),
        ("fnet.transforms.do_nothing", []),
        ("fnet.transforms.Capper(-1, 5.5)", [Clip(low=-1.0, high=5.5)]),
        ("fnet.transforms.Capper(hi=3)", [Clip(high=3.0)]),
        (
            "[fnet.transforms.normalize, fnet.transforms.Resizer((1, 0.37241, 0.37241))]",
            [Normalize(), Resize(zoom=(1.0, 0.37241, 0.37241))],
        ),
        (
            '["fnet.transforms.normalize", "fnet.transforms.Resizer((1, 0.37241, 0.37241))"]',
            [Normalize(), Resize(zoom=(1.0, 0.37241, 0.37241))],
        ),
        (
            ["fnet.transforms.Resizer([1, 0.5931, 0.5931])", "fnet.transforms.normalize"],
            [Resize(zoom=(1.0, 0.5931, 0.5931)), Normalize()],
        ),
        ("fnet.transforms.Propper('+', mode='reflect')", [PadToMultiple(mode="reflect")]),
        ("fnet.transforms.Propper(action='+', by=8)", [PadToMultiple(multiple=8, mode="constant")]),
        ("fnet.transforms.Propper('-')", [CropToMultiple()]),
        ("fnet.transforms.Propper()", [CropToMultiple()]),
        ("fnet.transforms.Padder('+', 32, 'edge')", [PadToMultiple(multiple=32, mode="edge")]),
        ("fnet.transforms.Padder()", [PadToMultiple(mode="constant")]),
        ("fnet.transforms.Cropper('-', by=16, n_max_pixels=6000000)", [CropToMultiple()]),
        ("fnet.transforms.Normalize()", [Normalize()]),
        ("fnet.transforms.ToFloat()", []),
        ("normalize", [Normalize()]),
    ],
)
def test_parse_fnet_transform(text, expected):
    assert parse_fnet_transform(text) == expected


def test_parsed_fnet_pipeline_matches_original_semantics():
    x = _random((1, 6, 30, 26))
    p = pipeline_from_fnet("[fnet.transforms.normalize, fnet.transforms.Resizer((1, 0.5, 0.5))]")
    y, _ = p.apply(x)
    z = x[0].astype(np.float32)
    z = (z - z.mean()) / z.std()  # fnet.transforms.normalize
    ref = scipy.ndimage.zoom(z, (1, 0.5, 0.5), mode="nearest")  # fnet.transforms.Resizer
    np.testing.assert_allclose(y[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "text,msg",
    [
        ("__import__('os').system('echo hi')", "not a supported fnet transform expression"),
        ("fnet.transforms.Resizer(__import__('os').getcwd())", "arguments must be literals"),
        ("fnet.transforms.Blur(2)", "unsupported fnet transform 'fnet.transforms.Blur'.*supported: fnet.transforms.normalize"),
        ("os.system", "unsupported fnet transform 'os.system'"),
        ("fnet.transforms.normalize(x)", "is a function"),
        ("fnet.transforms.Resizer", "is a class"),
        ("fnet.transforms.Resizer(0.5)", "factors must be a tuple/list of numbers"),
        ("fnet.transforms.Resizer((1, 'a'))", "factors must be a tuple/list of numbers"),
        ("fnet.transforms.Resizer((1, 0.5), per_dim=1)", "per_dim=1 not supported"),
        ("fnet.transforms.Resizer((1, -0.5))", "zoom values must be positive"),
        ("fnet.transforms.Resizer()", "missing argument 'factors'"),
        ("fnet.transforms.Resizer((1, 2), foo=1)", "unknown argument 'foo'"),
        ("fnet.transforms.Resizer(*a)", "arguments must be literals|\\*args"),
        ("fnet.transforms.Padder(4)", "only padding='\\+'"),
        ("fnet.transforms.Padder('+', mode='wrap')", "pad mode 'wrap' not supported"),
        ("fnet.transforms.Propper('*')", "Propper action must be"),
        ("fnet.transforms.Propper('+', n_max_pixels=5)", "not valid for a Padder"),
        ("fnet.transforms.Cropper(offset=0)", "only offset='mid'"),
        ("fnet.transforms.Cropper(dims_no_crop=0)", "dims_no_crop is not supported"),
        ("lambda: 1", "not a supported fnet transform expression"),
        ("fnet.transforms.normalize +", "cannot parse"),
        ("", "empty"),
        ('["fnet.transforms.normalize", ["x"]]', "unsupported fnet transform 'x'"),
    ],
)
def test_parse_fnet_transform_rejects(text, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_fnet_transform(text)


def test_parse_fnet_transform_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    for text in [
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        f"[fnet.transforms.normalize, __import__('pathlib').Path({str(marker)!r}).touch()]",
        f"fnet.transforms.Resizer(__import__('pathlib').Path({str(marker)!r}).touch())",
    ]:
        with pytest.raises(ConfigError):
            parse_fnet_transform(text)
    assert not marker.exists()


