"""chorus.toml as written, with the standard library only: where it is, its TOML, its paths made absolute.
config.py validates what it holds (pydantic); the command line also reads it before pydantic and the data
libraries load, to start walking the site at once (cli._walk_plan)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_NAME = "chorus.toml"


def config_path(given: str | None) -> str | None:
    """The config file a command reads: --config, else ./chorus.toml if there is one, else none."""
    return given or (CONFIG_NAME if Path(CONFIG_NAME).is_file() else None)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's TOML as a dict (not validated); a missing, unreadable or malformed file is a ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", where=str(path),
                          fix="pass --config with an existing file, or omit it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", where=str(path),
                          fix="check the file's permissions and encoding (UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file is not valid TOML: {exc}", where=str(path),
                          fix="fix the TOML syntax at the position given") from None


def resolve_path(base: Path, value: str | None) -> str | None:
    """A path setting as the run uses it: a URL as it is, a local path absolute (relative ones from `base`,
    the config file's folder)."""
    if value is None or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path))
