"""Config: vlmd.toml, frozen, with every key documented in the repository's ``vlmd.toml``.

Unknown sections and keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

TOKEN_FILE = "vlmd.token"
READ_TOKEN_FILE = "vlmd.read-token"


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file, section and key."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8470
    token: str = ""
    read_token: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_mb: float = 32.0
    feed_buffer: int = 256
    feed_buffer_mb: float = 8.0
    max_ws_clients: int = 512
    send_timeout_s: float = 10.0
    graceful_s: float = 10.0


@dataclass(frozen=True)
class LogConfig:
    path: str = "vlmd.db"
    synchronous: str = "full"


@dataclass(frozen=True)
class DatasetteConfig:
    enabled: bool = True
    port: int = 8471


@dataclass(frozen=True)
class WatchdogConfig:
    interval_s: float = 0.05
    heartbeat_s: float = 1.0
    hang_after_s: float = 120.0
    fail_after: int = 10
    max_failed: float = 0.5


@dataclass(frozen=True)
class LauncherConfig:
    """How vlmd starts the agents of submitted runs: ``local`` subprocesses or a Slurm array job."""

    kind: str = "local"
    partition: str = ""
    account: str = ""
    time_limit: str = ""
    gpus_per_shard: int = 0
    extra_sbatch: tuple[str, ...] = ()
    setup: str = ""
    agent: str = ""
    agent_url: str = ""
    job_dir: str = ""
    poll_s: float = 5.0


@dataclass(frozen=True)
class Config:
    """The whole configuration; `Config()` is the defaults."""

    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    datasette: DatasetteConfig = field(default_factory=DatasetteConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    source: str = "(defaults)"

    @classmethod
    def load(cls, path: str | Path | None = None) -> Config:
        """Read `path`; else ``$VLMD_CONFIG``, else ``./vlmd.toml`` if present, else defaults.

        Raises ConfigError naming the file and key for a missing file, bad TOML, an unknown
        section or key, or a value of the wrong type.
        """
        if path is None:
            path = os.environ.get("VLMD_CONFIG") or ("vlmd.toml" if Path("vlmd.toml").is_file()
                                                    else None)
            if path is None:
                return cls()
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except RecursionError:
            raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "(dict)") -> Config:
        """Build a Config from parsed TOML, checking every section, key and type."""
        sections = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
        built: dict[str, Any] = {}
        for name, value in data.items():
            if name not in sections:
                raise ConfigError(f"{source}: unknown section [{name}] "
                                  f"(known: {', '.join(sections)})")
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name} must be a [{name}] table")
            factory: Any = sections[name].default_factory
            built[name] = _section(factory(), value, f"{source}: [{name}]")
        return cls(**built, source=source)

    def resolve_token(self, *, create: bool = False) -> str:
        """The write token: ``$VLMD_TOKEN``, else ``server.token``, else the state file's
        (``vlmd.token`` beside the log, or in ``$STATE_DIRECTORY``); "" when there is none.

        With `create` (the daemon, on its first start) a missing state file is created with
        mode 0600. A client never creates one: a token it made up would only be refused.
        ConfigError if the file is there but others could read or replace it (`token_file`).
        """
        token = os.environ.get("VLMD_TOKEN") or self.server.token
        return token or token_file(self.state_dir / TOKEN_FILE, create=create)

    def resolve_read_token(self, *, create: bool = False) -> str | None:
        """The read token when ``server.read_token`` is on (else None): ``$VLMD_READ_TOKEN``,
        else the state file ``vlmd.read-token`` (made, with `create`, as the write token's is;
        "" when there is none). ConfigError if it is the write token: a reader must not be able
        to write."""
        if not self.server.read_token:
            return None
        token = os.environ.get("VLMD_READ_TOKEN") or token_file(
            self.state_dir / READ_TOKEN_FILE, create=create)
        if token and token == self.resolve_token(create=create):
            raise ConfigError("the read token ($VLMD_READ_TOKEN) is the write token: give "
                              "readers a token of their own")
        return token

    def token_hint(self) -> str:
        """Where a client looked for the token, and how to give it the daemon's (for a 401)."""
        path = self.state_dir / TOKEN_FILE
        looked = ["$VLMD_TOKEN (set)" if os.environ.get("VLMD_TOKEN") else "$VLMD_TOKEN (unset)",
                  f"server.token in {self.source} ({'set' if self.server.token else 'unset'})",
                  f"{path} ({'read' if path.is_file() else 'no such file'})"]
        return (f"this client looked in {', '.join(looked)}; set VLMD_TOKEN to the daemon's "
                "token (the vlmd.token in its state directory), or pass --config with the "
                "daemon's vlmd.toml")

    @property
    def state_dir(self) -> Path:
        """Where vlmd keeps its own files: ``$STATE_DIRECTORY`` (systemd) or the log's folder."""
        env = os.environ.get("STATE_DIRECTORY")
        return Path(env.split(":")[0]) if env else Path(self.log.path).resolve().parent

    @property
    def url(self) -> str:
        """The daemon's base URL as clients should use it."""
        host = "127.0.0.1" if self.server.host in ("0.0.0.0", "") else self.server.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server.port}"

    def replace(self, **sections: dict[str, Any]) -> Config:
        """A copy with some keys changed, e.g. ``cfg.replace(server={"port": 0})``."""
        changed = {name: dataclasses.replace(getattr(self, name), **keys)
                   for name, keys in sections.items()}
        return dataclasses.replace(self, **changed)


def token_file(path: Path, *, create: bool = True) -> str:
    """The token in `path`; made (mode 0600) if there is none and `create`, else "".

    Raises ConfigError, naming the file and what to do, when it is not a regular file of this
    user that nobody else may read or write: a token file another user planted or can read
    would hand them the daemon.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            return ""
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token
    except OSError as e:
        raise ConfigError(f"{path}: cannot use this token file ({e.strerror}); delete it and "
                          "vlmd makes a new one") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        fix = f"delete it (vlmd makes a new one) or chmod 600 {path}"
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: not a regular file; delete it and vlmd makes a new one")
        if st.st_uid != os.geteuid():
            raise ConfigError(f"{path}: owned by uid {st.st_uid}, not by vlmd's user (uid "
                              f"{os.geteuid()}): someone else could have chosen the token; "
                              "delete it and vlmd makes a new one")
        if st.st_mode & 0o077:
            raise ConfigError(f"{path}: mode {st.st_mode & 0o777:04o} lets other users read or "
                              f"change the token; {fix}")
        token = f.read().strip()
    if not token:
        raise ConfigError(f"{path}: empty; delete it and vlmd makes a new one")
    return token


def _section(default: Any, values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(type(default))
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(hints)})")
        want = hints[key]
        if get_origin(want) is tuple:  # tuple[str, ...]: a TOML array of strings
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{where}: {key} must be an array of strings, "
                                  f"not {type(value).__name__} {value!r}")
            continue
        ok = (isinstance(value, want) and not (want is int and isinstance(value, bool))) or (
            want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{where}: {key} must be {want.__name__}, "
                              f"not {type(value).__name__} {value!r}")
    coerced = {k: float(v) if hints[k] is float else tuple(v) if isinstance(v, list) else v
               for k, v in values.items()}
    return dataclasses.replace(default, **coerced)
