"""Config dataclasses and YAML loading: defaults, validation, errors naming the key."""
from __future__ import annotations

import pytest
import yaml

from vpr_ros.config import (FLEET_SECTIONS, LOCALIZER_SECTIONS, MAP_BUILDER_SECTIONS, LocalizerConfig,
                            ModelConfig, describe, from_dict, load_node_config)
from vpr_ros.errors import ConfigError

from conftest import REPO


def test_shipped_yaml_files_load_and_match_defaults():
    loc = load_node_config(REPO / "config" / "localizer.yaml", "localizer", LOCALIZER_SECTIONS)
    assert loc[""] == LocalizerConfig()
    assert loc["model"] == ModelConfig()
    mb = load_node_config(REPO / "config" / "map_builder.yaml", "map_builder", MAP_BUILDER_SECTIONS)
    assert mb["keyframes"].min_distance == 1.0


def test_shipped_yaml_files_list_every_declared_parameter():
    """Users copy these files: every parameter the nodes declare is there, with its default."""
    from dataclasses import MISSING, fields

    for name, sections in (("localizer", LOCALIZER_SECTIONS), ("map_builder", MAP_BUILDER_SECTIONS),
                           ("fleet", FLEET_SECTIONS)):
        params = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())["/**"]["ros__parameters"]
        for section, cls in sections.items():
            listed = params.get(section, {}) if section else params
            default = cls()
            for f in fields(cls):
                assert f.name in listed, f"config/{name}.yaml lacks {section + '.' if section else ''}{f.name}"
                want = getattr(default, f.name)
                if f.default is not MISSING or f.default_factory is not MISSING:  # type: ignore[misc]
                    got = listed[f.name]
                    assert (list(got) if isinstance(want, (list, tuple)) else got) == \
                        (list(want) if isinstance(want, (list, tuple)) else want), (name, section, f.name)


def test_every_field_has_a_description():
    for cls in {*LOCALIZER_SECTIONS.values(), *MAP_BUILDER_SECTIONS.values(), *FLEET_SECTIONS.values()}:
        assert all(len(text) > 10 for text in describe(cls).values()), cls


@pytest.mark.parametrize("key,value,needle", [
    ("top_k", 0, "top_k"),
    ("top_k", "five", "top_k"),
    ("score_threshold", 1.5, "score_threshold"),
    ("backend", "tensorflow", "backend"),
    ("camera_topics", ["/abs/image"], "camera_topics"),
    ("min_time_separation", float("nan"), "min_time_separation"),
    ("no_such_key", 1, "no_such_key"),
])
def test_bad_values_name_the_key(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict(LocalizerConfig, {key: value})


def test_yaml_file_errors_name_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"top_k": -3}}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*top_k"):
        load_node_config(p, "localizer", LOCALIZER_SECTIONS)
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"model": {"input_size": 100}}}}))
    with pytest.raises(ConfigError, match="input_size"):
        load_node_config(p, "localizer", LOCALIZER_SECTIONS)
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"modle": {"arch": "x"}}}}))
    with pytest.raises(ConfigError, match="modle"):
        load_node_config(p, "localizer", LOCALIZER_SECTIONS)
    p.write_text("a: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_node_config(p, "localizer", LOCALIZER_SECTIONS)
    with pytest.raises(ConfigError, match="not found"):
        load_node_config(tmp_path / "missing.yaml", "localizer", LOCALIZER_SECTIONS)


def test_node_specific_section_overrides_wildcard(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"top_k": 3}},
                                 "localizer": {"ros__parameters": {"top_k": 7}}}))
    assert load_node_config(p, "localizer", LOCALIZER_SECTIONS)[""].top_k == 7
