"""Typed config reading (labelfree_jax.core.schema): strict, bounded, one clear error."""

import json

import pytest

from labelfree_jax.core.errors import ConfigError
from labelfree_jax.core.schema import MAX_JSON_DEPTH, PixelSizes, StrictModel, load_model, parse_model, read_json


class Cfg(StrictModel):
    name: str = "x"
    pixel_size_um: PixelSizes | None = None


def test_valid_config_round_trips(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"name": "a", "pixel_size_um": {"z": 0.29, "y": 0.108, "x": 0.108}}))
    cfg = load_model(Cfg, tmp_path / "c.json")
    assert cfg.pixel_size_um == {"z": 0.29, "y": 0.108, "x": 0.108}
    assert parse_model(Cfg, cfg.model_dump_json()) == cfg


@pytest.mark.parametrize(("text", "words"), [
    ("[" * 100_000 + "]" * 100_000, "nested more than"),        # RecursionError before
    ('{"name": "a", "oops": 1}', "oops: Extra inputs are not permitted"),
    ('{"pixel_size_um": {"q": 1}}', "pixel size keys must be z, y, x"),
    ('{"pixel_size_um": {"x": 0}}', "finite positive number"),
    ('{"pixel_size_um": {"x": NaN}}', "finite positive number"),
    ('{"pixel_size_um": {"x": true}}', "pixel_size_um"),
    ("[1, 2]", "must be a JSON object"),
    ("{bad", "not valid JSON"),
])
def test_bad_configs_are_one_clear_config_error(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_model(Cfg, path)
    message = str(err.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message


def test_nesting_at_the_limit_is_fine_and_beyond_is_refused():
    assert read_json  # the file reader shares the same checks
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_model(Cfg, ok)
    with pytest.raises(ConfigError, match="nested more than"):
        parse_model(Cfg, "[" + ok + "]")


def test_huge_and_unreadable_files_are_refused(tmp_path, monkeypatch):
    import labelfree_jax.core.schema as schema

    monkeypatch.setattr(schema, "MAX_CONFIG_BYTES", 100)
    (tmp_path / "big.json").write_text('{"name": "' + "a" * 200 + '"}')
    with pytest.raises(ConfigError, match="too large"):
        load_model(Cfg, tmp_path / "big.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_model(Cfg, tmp_path / "absent.json")
