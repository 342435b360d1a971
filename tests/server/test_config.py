import pytest
from tracemark.server.config import ConfigError, load_settings


def test_file_env_and_flag_precedence(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text(
        '[teacher]\nquantization = "fp4"\nmax_batch_size = 3\n[rewrite]\ndefault_pipeline = ["identity"]\n'
    )
    assert load_settings(path).teacher.quantization == "fp4"
    monkeypatch.setenv("TRACEMARK_TEACHER__QUANTIZATION", "int8")
    settings = load_settings(path)
    assert settings.teacher.quantization == "int8"
    assert settings.teacher.max_batch_size == 3
    assert (
        load_settings(path, {"teacher": {"quantization": "none", "model": None}}).teacher.quantization
        == "none"
    )


def test_bad_values_give_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="teacher.quantization"):
        load_settings(overrides={"teacher": {"quantization": "nf5"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[teacher\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[teacher]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(unknown)
