"""Capture configuration: aliases, files, environment, and one-line errors."""

from __future__ import annotations

import json

import pytest

from tensortap.capture.config import build_config, config_from_env, parse_module_filter
from tensortap.errors import ConfigError


def test_vllm_intermediate_logging_aliases():
    cfg = build_config({"output_dir": "/tmp/x", "module_call_match": ["layers\\.0\\.mlp:1"],
                        "log_step_ids": [0, 2], "max_tensor_size": 10, "device_names": ["cpu"],
                        "enabled": True})
    assert cfg.out == "/tmp/x" and cfg.steps == [0, 2] and cfg.max_numel == 10
    assert cfg.devices == ["cpu"]
    (f,) = cfg.module_filters()
    assert f.pattern == "layers\\.0\\.mlp" and f.call == 1
    assert cfg.wants_step(2) and not cfg.wants_step(1)
    assert build_config({"log_step_ids": []}).wants_step(7)     # empty: all steps


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        build_config({"modulez": ["x"]})
    msg = str(e.value)
    assert "unknown capture config key 'modulez'" in msg and "modules" in msg and "log_step_ids" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("bad, needle", [
    ({"modules": ["(["]}, "invalid module regex"),
    ({"steps": [-1]}, "steps"),
    ({"mode": "everything"}, "mode"),
    ({"flush_interval": 0}, "flush_interval"),
    ({"on_full": "explode"}, "on_full"),
    ({"pending_bytes": "lots"}, "pending_bytes"),
])
def test_invalid_values_are_one_line_errors(bad, needle):
    with pytest.raises(ConfigError) as e:
        build_config(bad)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_json_file_yaml_file_and_inline(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"modules": "mlp", "steps": [1]}))
    (tmp_path / "c.yaml").write_text("modules: [attn]\nmode: stats\n")
    assert build_config(str(tmp_path / "c.json")).modules == ["mlp"]
    assert build_config(str(tmp_path / "c.yaml")).mode == "stats"
    assert build_config('{"roles": "outputs"}').roles == ["outputs"]
    with pytest.raises(ConfigError, match="neither inline JSON nor a readable file"):
        build_config(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="invalid JSON"):
        build_config("{not json")


def test_environment(tmp_path):
    assert config_from_env({}) is None
    cfg = config_from_env({"TENSORTAP_DIR": str(tmp_path)})
    assert cfg.out == str(tmp_path)
    cfg = config_from_env({"TENSORTAP_CONFIG": json.dumps({"output_dir": "o", "log_step_ids": [3]})})
    assert cfg.out == "o" and cfg.steps == [3]
    with pytest.raises(ConfigError, match="TENSORTAP_DIR"):
        config_from_env({"TENSORTAP_CONFIG": "{}"})


def test_call_suffix_only_when_digits():
    assert parse_module_filter("a:b").pattern == "a:b"
    assert parse_module_filter("(?:x)y:3").call == 3
