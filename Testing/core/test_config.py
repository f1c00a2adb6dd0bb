"""Config files map strictly onto dataclasses: typos are errors that name the key."""

from dataclasses import dataclass, field

import pytest

from meddiffcore.config import apply_overrides, from_dict, read_config_file, to_dict
from meddiffcore.errors import ConfigError, ErrorCode


@dataclass
class Inner:
    size: tuple[int, ...] = (64, 64, 64)
    rate: float = 0.1


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    flag: bool = False
    maybe: int | None = None


def test_nested_dataclass_from_toml_and_yaml(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('name = "run"\nsteps = 5\n[inner]\nsize = [32, 32, 16]\nrate = 1\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("name: run\nsteps: 5\ninner:\n  size: [32, 32, 16]\n  rate: 1\n")
    for path in (toml, yaml):
        cfg = from_dict(Outer, read_config_file(path))
        assert cfg.inner.size == (32, 32, 16) and isinstance(cfg.inner.size, tuple)
        assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
        assert cfg.steps == 5 and cfg.name == "run"


def test_unknown_key_names_key_section_and_known_keys():
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, {"inner": {"sise": [1]}})
    assert "'sise'" in info.value.message and "inner" in info.value.message
    assert "size" in info.value.hint and "rate" in info.value.hint
    assert info.value.code is ErrorCode.BAD_CONFIG and info.value.exit_status == 4


@pytest.mark.parametrize("data", [{"steps": "ten"}, {"flag": "yes"}, {"steps": 1.5}, {"inner": {"size": 3}}])
def test_wrong_types_are_rejected(data):
    with pytest.raises(ConfigError):
        from_dict(Outer, data)


def test_round_trip_and_overrides():
    cfg = from_dict(Outer, apply_overrides({"steps": 3}, ["inner.rate=0.5", "steps=7", "maybe=2"]))
    assert (cfg.steps, cfg.inner.rate, cfg.maybe) == (7, 0.5, 2)
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unparseable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "none.toml")
