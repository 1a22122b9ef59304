import dataclasses
from pathlib import Path

import pytest

from reconstruct.config import (
    PRESETS_DIR,
    coerce,
    config_hash,
    load_yaml,
    option,
    override,
    parse_set,
    to_dict,
)
from reconstruct.errors import ConfigError
from reconstruct.keypoints import KeypointsConfig
from reconstruct.settings import VIDEO_DEFAULTS, PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_parse_set_nests_and_types_values():
    assert parse_set(["keypoints.max_keypoints=1024", "mapping.mapper=global", "a.b.c=true"]) == {
        "keypoints": {"max_keypoints": 1024},
        "mapping": {"mapper": "global"},
        "a": {"b": {"c": True}},
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_parse_set_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        parse_set([bad])


def test_override_validates_types_and_choices():
    cfg = override(PipelineConfig(), {"keypoints": {"max_keypoints": "512", "resize": "none"}})
    assert cfg.keypoints.max_keypoints == 512
    assert cfg.keypoints.resize is None
    with pytest.raises(ConfigError, match="one of"):
        override(PipelineConfig(), {"keypoints": {"model": "n64"}})
    with pytest.raises(ConfigError, match="integer"):
        override(PipelineConfig(), {"keypoints": {"max_keypoints": 1.5}})
    with pytest.raises(ConfigError, match="unknown key 'maxkp'"):
        override(PipelineConfig(), {"keypoints": {"maxkp": 3}})
    with pytest.raises(ConfigError, match="max_keypoints must be positive"):
        override(PipelineConfig(), {"keypoints": {"max_keypoints": 0}})


def test_coerce_bool_and_path():
    assert coerce("yes", bool, "x") is True
    assert coerce("off", bool, "x") is False
    with pytest.raises(ConfigError):
        coerce("maybe", bool, "x")
    assert coerce("~/a", Path, "x") == Path("~/a").expanduser()


def test_hash_ignores_unhashed_fields_only():
    a = KeypointsConfig()
    assert config_hash(a) == config_hash(KeypointsConfig(workers=4))
    assert config_hash(a) != config_hash(KeypointsConfig(max_keypoints=1000))
    assert "workers" not in to_dict(a, hashed_only=True)


def test_an_unless_default_field_is_hashed_only_when_set():
    @dataclasses.dataclass(frozen=True)
    class Before:
        size: int = option(1, "a setting")

    @dataclasses.dataclass(frozen=True)
    class After:  # the same settings plus an option added later
        size: int = option(1, "a setting")
        extra: str = option("none", "added later", hashed="unless_default")

    # files made before the option existed keep their hash; setting it changes the hash
    assert config_hash(After()) == config_hash(Before())
    assert config_hash(After(extra="clahe")) != config_hash(Before())
    assert "extra" not in to_dict(After(), hashed_only=True)
    assert to_dict(After(extra="clahe"), hashed_only=True) == {"size": 1, "extra": "clahe"}
    # the keypoint stage's contrast option is one: default files stay valid
    assert "contrast" not in to_dict(KeypointsConfig(), hashed_only=True)
    assert config_hash(KeypointsConfig()) != config_hash(KeypointsConfig(contrast="clahe"))


def test_presets_only_override_existing_fields():
    presets = sorted(PRESETS_DIR.glob("*.yaml"))
    assert {p.stem for p in presets} >= {"default", "fast", "accurate"}
    for p in presets:
        load_config(p)  # raises ConfigError on any unknown key or bad value
        assert isinstance(load_yaml(p), dict)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("keypoints: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_hash_ignores_settings_of_unselected_backends():
    from reconstruct.matching import MatchingConfig

    a = KeypointsConfig()  # aliked
    assert config_hash(a) == config_hash(KeypointsConfig(sift_contrast_threshold=0.5))
    patch = dataclasses.replace(a.patch, backbone="vitb14")
    assert config_hash(a) == config_hash(dataclasses.replace(a, patch=patch))
    assert config_hash(a) != config_hash(KeypointsConfig(nms_radius=4))
    sift = KeypointsConfig(extractor="sift")
    assert config_hash(sift) == config_hash(KeypointsConfig(extractor="sift", nms_radius=4))
    assert config_hash(sift) != config_hash(
        KeypointsConfig(extractor="sift", sift_contrast_threshold=0.5)
    )
    lg = MatchingConfig()
    assert config_hash(lg) == config_hash(MatchingConfig(mnn_ratio=0.9))
    assert config_hash(MatchingConfig(matcher="mnn")) != config_hash(
        MatchingConfig(matcher="mnn", mnn_ratio=0.9)
    )


def test_choosing_sift_chooses_a_matcher_that_can_match_it():
    assert load_config(overrides={"keypoints": {"extractor": "sift"}}).matching.matcher == "mnn"
    chosen = {"keypoints": {"extractor": "sift"}, "matching": {"matcher": "lightglue"}}
    assert load_config(overrides=chosen).matching.matcher == "lightglue"
    assert load_config().matching.matcher == "lightglue"


def test_defaults_layer_is_below_yaml_and_set(tmp_path):
    assert load_config(defaults=VIDEO_DEFAULTS).pairs.strategy == "sequential"
    assert load_config().pairs.strategy != "sequential"
    yaml_file = tmp_path / "exhaustive.yaml"
    yaml_file.write_text("pairs:\n  strategy: exhaustive\n")
    assert load_config(yaml_file, defaults=VIDEO_DEFAULTS).pairs.strategy == "exhaustive"
    chosen = {"pairs": {"strategy": "retrieval"}}
    assert load_config(overrides=chosen, defaults=VIDEO_DEFAULTS).pairs.strategy == "retrieval"


def test_defaults_layer_does_not_count_as_a_user_choice():
    # a default extractor is not the user's: the patch matcher still chooses its own extractor
    defaults = {"keypoints": {"extractor": "aliked"}}
    cfg = load_config(overrides={"matching": {"matcher": "dinov2_patch"}}, defaults=defaults)
    assert cfg.keypoints.extractor == "dinov2_patch"
    with pytest.raises(ConfigError, match="defaults"):
        load_config(defaults={"pairs": {"stratgy": "sequential"}})
