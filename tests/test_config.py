import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from recommender.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_config_toml_lists_every_setting_with_its_default() -> None:
    assert load_settings(REPO / "config.toml", environ={}) == Settings()
    listed = tomllib.loads((REPO / "config.toml").read_text())
    assert _paths(listed) == _paths(msgspec.to_builtins(Settings()))


def _paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in tree.items():
        paths |= _paths(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return paths


def test_environment_overrides_nested_keys_with_typed_values(tmp_path: Path) -> None:
    settings = load_settings(
        REPO / "config.toml",
        environ={
            "RECOMMENDER_REDIS__EMBEDDED__DATA_DIR": "/srv/recommender",
            "RECOMMENDER_STREAMS__CONSUMERS_ENABLED": "false",
            "RECOMMENDER_SERVER__PORT": "9000",
            "RECOMMENDER_REDIS__SOCKET_TIMEOUT_SECONDS": "0.5",
            "RECOMMENDER_STREAMS__BLOCK_MS": "100",
            "UNRELATED": "ignored",
        },
    )
    assert settings.redis.embedded.data_dir == "/srv/recommender"
    assert settings.streams.consumers_enabled is False
    assert settings.server.port == 9000
    assert settings.redis.socket_timeout_seconds == 0.5


def test_precedence_is_file_then_environment_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('[server]\nport = 7000\nhost = "10.0.0.1"\n[logging]\nlevel = "DEBUG"\n')
    settings = load_settings(
        file,
        environ={"RECOMMENDER_SERVER__PORT": "7100", "RECOMMENDER_SERVER__HOST": "0.0.0.0"},
        overrides={"server.port": 7200},
    )
    assert (settings.server.port, settings.server.host, settings.logging.level) == (
        7200,
        "0.0.0.0",
        "DEBUG",
    )


def test_config_file_comes_from_environment_variable(tmp_path: Path) -> None:
    file = tmp_path / "elsewhere.toml"
    file.write_text('[redis]\nnamespace = "shop1:"\n')
    settings = load_settings(environ={"RECOMMENDER_CONFIG": str(file)})
    assert settings.redis.namespace == "shop1:"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RECOMMENDER_SERVER__PORT": "eighty"}, "server.port: Expected `int`, got `str`"),
        ({"RECOMMENDER_SERVER__PORT": "70000"}, "server.port: Expected `int` <= 65535"),
        ({"RECOMMENDER_REDIS__NAMESPACE": "no colon"}, "redis.namespace: Expected `str` matching"),
        ({"RECOMMENDER_LOGGING__LEVEL": "LOUD"}, "logging.level: Invalid enum value 'LOUD'"),
        ({"RECOMMENDER_REDIS__PASSWORD": "x"}, "redis: Object contains unknown field `password`"),
        (
            {"RECOMMENDER_STREAMS__MAX_DELIVERIES": "0"},
            "streams.max_deliveries: Expected `int` >= 1",
        ),
        (
            {"RECOMMENDER_STREAMS__BLOCK_MS": "5000"},
            "streams.block_ms must be shorter than redis.socket_timeout_seconds",
        ),
        (
            {"RECOMMENDER_RECOMMEND__SELLING_NOW_DAYS": "120"},
            "recommend.selling_now_days must be at most tracking.popularity_max_days",
        ),
    ],
)
def test_bad_values_name_the_key_and_the_rule(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(REPO / "config.toml", environ=environ)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_and_malformed_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings(broken, environ={})


def test_serve_refuses_a_bad_setting_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "recommender", "serve"],
        env={"RECOMMENDER_SERVER__PORT": "-1", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "recommender: error: invalid setting: server.port: Expected `int` >= 0"
    ]
