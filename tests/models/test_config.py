"""Typed network and package config (labelfree_jax.models.config)."""

import numpy as np
import pytest

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.core.schema import parse_model
from labelfree_jax.models.config import IntensityStatistics, NetworkConfig, PackageConfig
from labelfree_jax.models.fnet import variable_shapes


@pytest.mark.parametrize("kwargs", [
    {}, {"ndim": 2, "depth": 3, "mult_chan": 8, "in_channels": 13, "out_channels": 3}, {"depth": 0},
    {"base_channels": 16, "in_channels": 2, "out_channels": 2}, {"ndim": 2, "depth": 6, "mult_chan": 4},
])
def test_variable_count_matches_the_built_network(kwargs):
    net = NetworkConfig(**kwargs)
    assert net.variable_count() == sum(int(np.prod(s)) for s in variable_shapes(net).values())


def test_the_papers_net_is_counted_exactly():
    params = {k: s for k, s in variable_shapes(NetworkConfig()).items() if k.startswith("params")}
    assert sum(int(np.prod(s)) for s in params.values()) == 23_280_769
    assert NetworkConfig().variable_count() > 23_280_769  # plus the BatchNorm statistics


@pytest.mark.parametrize("network", [{"mult_chan": 10**6}, {"base_channels": 10**5}, {"depth": 8, "mult_chan": 256}])
def test_absurd_networks_are_refused_before_anything_is_built(network):
    with pytest.raises(ConfigError, match="GiB of float32 weights"):
        parse_model(PackageConfig, {"network": network}, source="config.json")


def test_intensity_statistics_need_one_value_per_channel():
    IntensityStatistics(mean=(1.0,), std=(2.0,), percentile_1=(0.0,), percentile_99=(5.0,), images=3)
    with pytest.raises(ConfigError, match="one value per channel"):
        parse_model(IntensityStatistics, {"mean": [1, 2], "std": [1], "percentile_1": [0], "percentile_99": [1],
                                          "images": 1})
