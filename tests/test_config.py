"""Config: vlmd.toml documents every key with its default; mistakes are named."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from vlmd.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_vlmd_toml_documents_every_key_with_its_default() -> None:
    shipped = tomllib.loads((ROOT / "vlmd.toml").read_text())
    defaults = Config()
    documented = {(s, k) for s, keys in shipped.items() for k in keys}
    known = {(f.name, k.name) for f in dataclasses.fields(Config) if f.name != "source"
             for k in dataclasses.fields(getattr(defaults, f.name))}
    assert documented == known
    loaded = Config.load(ROOT / "vlmd.toml")
    assert dataclasses.replace(loaded, source=defaults.source) == defaults


@pytest.mark.parametrize(("text", "message"), [
    ("[sever]\nport = 1\n", r"unknown section \[sever\]"),
    ("[server]\nprot = 1\n", r"\[server\]: unknown key 'prot' \(known: host, port"),
    ("[server]\nport = \"80\"\n", r"\[server\]: port must be int, not str '80'"),
    ("[server]\nport = true\n", r"port must be int, not bool"),
    ("[server\n", r"not valid TOML"),
    ("server = 3\n", r"server must be a \[server\] table"),
])
def test_config_mistakes_name_the_file_section_and_key(tmp_path: Path, text: str,
                                                      message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        Config.load(path)
    assert str(path) in str(err.value)


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        Config.load(tmp_path / "nope.toml")


def test_integers_are_accepted_for_float_keys(tmp_path: Path) -> None:
    path = tmp_path / "v.toml"
    path.write_text("[watchdog]\nheartbeat_s = 2\n")
    assert Config.load(path).watchdog.heartbeat_s == 2.0


def test_the_token_file_is_created_once_with_mode_0600(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLMD_TOKEN", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    config = Config().replace(log={"path": str(tmp_path / "state" / "vlmd.db")})
    path = tmp_path / "state" / "vlmd.token"
    assert config.resolve_token() == ""  # a client never creates one
    assert not path.exists()
    token = config.resolve_token(create=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(token) >= 32
    assert config.resolve_token() == token
    assert config.resolve_token(create=True) == token
    monkeypatch.setenv("VLMD_TOKEN", "from-env")
    assert config.resolve_token() == "from-env"
