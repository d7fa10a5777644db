"""Run settings: chorus.toml, validated with pydantic, overridden by the command line.

Example chorus.toml (paths are relative to the file's folder):

    [site]
    root = "/data/chorus/site"          # OMOP/, Metadata/, <person_id>/...
    name = "site-a"                     # optional, recorded with each version

    [site.roots]                        # optional: one root per modality
    Waveforms = "/mnt/bedside/export"   # same layout below it: <person_id>/Waveforms/...

    [manifest]
    db = "chorus_manifest.sqlite"
    parquet = "snapshots"               # optional Parquet snapshots

    [run]
    mode = "full"                       # or "append"
    workers = 8
    follow_symlinks = false
    validate = true                     # check the procedures after each run (default)
    cloud_md5 = "stored-or-download"    # cloud roots: the storage's MD5, else download (or "download",
                                        # or "stored-only": never download; files without one are unverifiable)
    exclude = ["*.tmp", "scratch/*"]    # globs never hashed nor recorded (no '/': the file name; with '/': the path)
    default_excludes = true             # also the OS and editor junk: .DS_Store, Thumbs.db, ~$*, .*.swp, *~, ...

    [registry]                          # optional: procedure id ranges of `chorus-batch registry`
    image_proc_ids = [2000000000, 2000999999]
    waveform_proc_ids = [2001000000, 2999999999]

    [patterns]                          # optional: replace a modality's path patterns
    Waveforms = ['^(?P<person_id>[^/]+)/(?i:waveforms)/(?P<session>[^/]+)/(?P<file>[^/]+)$']

    [azure]                             # optional: for az:// (abfs://) roots
    account_url = "https://myacct.blob.core.windows.net"   # or: account_name = "myacct"
    # names of environment variables, never a secret itself (these are the defaults):
    # connection_string_env = "AZURE_STORAGE_CONNECTION_STRING"
    # sas_token_env = "AZURE_STORAGE_SAS_TOKEN"
    # account_key_env = "AZURE_STORAGE_KEY"
    # with none of them set: DefaultAzureCredential (az login, managed or workload identity, AZURE_CLIENT_*)

    [s3]                                # optional: for s3:// roots (pip install "chorus-batch[s3]")
    endpoint_url = "http://127.0.0.1:9000"   # an S3-compatible store (MinIO, ...); default: AWS_ENDPOINT_URL or AWS
    profile = "chorus"                  # an AWS profile (~/.aws/config); default: the standard AWS chain
    region = "us-east-1"
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from .config_file import MODALITIES, read_toml_text, resolve_path, setting_line  # noqa: F401  (config.MODALITIES as ever)
from .errors import ChorusError, ConfigError, SettingError
from .processes import default_workers
from .urls import holds_userinfo, mask_url, secret_variable

# Where a person finds every setting with an example (a config error's fix points there).
CONFIG_HELP = 'every setting, with an example: the README\'s section "Configuration: chorus.toml"'


def _defaults(model: type[BaseModel]):
    """The default of a [section] (or of CloudSettings) not written: the model's defaults, as model() makes them
    (no value to validate), without building the model's own validator: the one of the model that holds it
    validates what is written (see _Strict's defer_build)."""
    return lambda: model.model_construct()


class _Strict(BaseModel):
    # strict: `workers = "8"` is an error, not an 8 (TOML has types; a string where a number belongs is a typo)
    # defer_build: a model's validator is built when it is first used, not when this module is imported. A
    # [section]'s is never needed apart from ConfigFile's, which holds them all (a section left out of the file is
    # its defaults, made by _defaults: nothing to validate), so `run` builds two validators, not twelve
    # (ConfigFile's and RunSettings'); a command that makes no RunSettings never builds it.
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)
    _section = ""

    @model_validator(mode="before")
    @classmethod
    def _no_secret_names(cls, data):
        return _no_secret_keys(cls, data)


def parse_bytes(value: str | int) -> int:
    """A byte count: 1000, "500MB", "10GiB", "2T" (K/M/G/T are powers of 1024 with or without the i). Never
    negative ("-5G" was a limit of -5 GiB, taken), never infinite ("1e400G", "infM": an OverflowError, the run's
    "internal error")."""
    import math

    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip().upper().replace("IB", "").replace("B", "")
    factors = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        number = float(text[:-1]) * factors[text[-1]] if text and text[-1] in factors else int(text)
        if math.isfinite(number) and number >= 0:
            return int(number)
    except ValueError:
        pass
    raise ValueError(f"{value!r} is not a byte count (e.g. 10GiB, 500MB, 1000000)")


def parse_max_delete(value: str | int | float) -> tuple[str, float]:
    """`--max-delete` / `max_delete`: "50%" (of the previous version's files), a count ("1000"), or "all"
    (no limit, also for a root that looks empty). Returns ("percent"|"count"|"all", number)."""
    text = str(value).strip().lower()
    try:
        if text == "all":
            return "all", 0.0
        if text.endswith("%"):
            percent = float(text[:-1])
            if 0 <= percent <= 100:
                return "percent", percent
        elif (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or text.isdigit():
            return "count", float(int(text))  # max_delete = -5 (an int in TOML) refused every later run
    except ValueError:
        pass
    if isinstance(value, float) and 0 <= value <= 100:  # max_delete = 0.5 or 50.0: a share meant as a number
        # (max_delete = nan or inf was told to write "nan%" / "inf%": no share of 0-100, said as any other value)
        raise ValueError(f"{value!r} is neither a number of files (a whole number such as 1000) nor a percentage, "
                         f"which is written as text with % (max_delete = \"{value * 100 if value <= 1 else value:g}%\" "
                         "in chorus.toml)")
    raise ValueError(f"{value!r} is not a percentage of the previous version's files (e.g. 50%), a number of files "
                     "(e.g. 1000) or all")


def printable_name(value: str | None) -> str | None:
    """The site's name, recorded with each version and printed in summaries, logs and the report: one with a control
    character was taken as it was (an escape sequence rewrote the terminal, a line break split the cron log's lines).
    White space around it is left out: `name = " Site A "` was recorded so in every version's row, shown padded, and
    was another site than "Site A" to whatever compares names (never meant: no name starts or ends with a space)."""
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} holds a control character (a line break, a tab, an escape); write the name "
                         "without it")
    if value is not None and (_SECRET_TEXT.search(value) or holds_userinfo(value)):
        # (a SAS token pasted as the name was recorded in every version's row and shown in each report; never quoted)
        raise ValueError("looks like a secret (a SAS token, an account key, a password), not a site's name; its value "
                         "is not shown, and it is not recorded: write the site's name, and rotate the secret")
    return value if value is None else value.strip()


class SiteSection(_Strict):
    _section = "site"
    root: str | None = None
    name: str | None = None
    # (a {} or [] default, not default_factory=dict: pydantic copies it for each model as a factory makes it, and
    # reads no builtin's signature, which cost each command ~2 ms of CPU to compile tokenize's patterns)
    roots: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        return printable_name(value)

    @field_validator("roots")
    @classmethod
    def _known_modalities(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key in cls.model_fields:  # (`name = ...` written below [site.roots]: it was "unknown modality 'name'")
                raise ValueError(f"{key} = ... below [site.roots] is read as the root of a modality {key!r}: a "
                                 "[section] holds every line below it up to the next one; write it under [site], "
                                 "above [site.roots]")
            if key not in MODALITIES:
                raise _unknown_modality(key)
        return value


UNKNOWN_MODALITY = "unknown_modality"


def _unknown_modality(key: str) -> PydanticCustomError:
    """A [site.roots] or [patterns] key that is no modality, with the one probably meant; its `key` is where it is
    written (_problem names its line: it named the [section]'s, and no modality to write instead)."""
    meant = next((m for m in MODALITIES if m.lower() == key.lower()), None) or _close(key, list(MODALITIES))
    return PydanticCustomError(UNKNOWN_MODALITY, "unknown modality '{key}'" + (f"; did you mean {meant!r}?" if meant
                               else "") + f" (the modalities: {', '.join(MODALITIES)}; their names are case-sensitive)",
                               {"key": key})


class ManifestSection(_Strict):
    _section = "manifest"
    db: str | None = None
    parquet: str | None = None


class RunSection(_Strict):
    _section = "run"
    mode: Literal["full", "append"] = "full"
    workers: int = Field(default_factory=default_workers, ge=1, le=256)
    follow_symlinks: bool = False
    racy_window_s: float = Field(default=2.0, ge=0, le=3600)
    validate_site: bool = Field(default=True, alias="validate")  # check against the CHoRUS procedures after each run
    # the most of the previous version's files one run may remove: "50%" a share of them, 1000 (or "1000") a count
    max_delete: str | int = "50%"
    verify_sample: float = Field(default=1.0, ge=0, le=100)  # % of the site's files re-read each run (0: off)
    verify_max_bytes: str | int = "10GiB"  # ... but at most this much a run
    cloud_md5: Literal["stored-or-download", "download", "stored-only"] = "stored-or-download"
    exclude: list[str] = []  # globs (exclude.py); checked by pipeline.preflight
    default_excludes: bool = True  # also exclude the OS-junk list (exclude.DEFAULT_EXCLUDES)

    @field_validator("verify_max_bytes")
    @classmethod
    def _bytes(cls, value: str | int) -> str | int:
        parse_bytes(value)
        return value

    @field_validator("max_delete", mode="before")
    @classmethod
    def _max_delete(cls, value: object) -> object:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):  # a float: said as not a share
            parse_max_delete(value)
        return value


class RegistrySection(_Strict):
    """Procedure ids of the linkage registries (Multimodal-Linkage): one per image accession or waveform
    session, allocated once and kept; they must not collide with the site's own procedure_occurrence ids."""
    _section = "registry"

    image_proc_ids: list[int] = [2_000_000_000, 2_000_999_999]
    waveform_proc_ids: list[int] = [2_001_000_000, 2_999_999_999]

    @field_validator("image_proc_ids", "waveform_proc_ids")
    @classmethod
    def _ordered(cls, value: list[int]) -> list[int]:
        # (a last id past SQLite's and OMOP's 64-bit integers was taken, and failed the `registry` that allocated it)
        if len(value) != 2 or not 0 < value[0] <= value[1] <= 2**63 - 1:
            raise ValueError(f"give [first, last] with 0 < first <= last <= {2**63 - 1} (a 64-bit integer, as OMOP's "
                             "procedure_occurrence_id)")
        return value


class CentralSection(_Strict):
    """The site's central Azure container (the CHoRUS upload procedure): `upload` sends each version to
    <to>/<version>/..., signed in as [azure] says; the URL never carries a secret."""
    _section = "central"

    to: str | None = None  # az://<container>/ (or az://<container>/<prefix>/)
    workers: int = Field(default=8, ge=1, le=256)  # files sent at once

    @field_validator("to")
    @classmethod
    def _azure_url(cls, value: str | None) -> str | None:
        # (each said as what it is: a space at either end, or an https:// URL, was told "secrets go in the environment,
        # not the URL"; an AZ:// spelling, which --to takes, was refused)
        from .urls import AZURE_PROTOCOLS, protocol_of

        if value is None:
            return value
        if value != value.strip():
            raise ValueError(f"{mask_url(value)!r} {'starts' if value != value.lstrip() else 'ends'} with white space: "
                             f"write it without ({mask_url(value.strip())!r})")
        if "?" in value or holds_userinfo(value):
            raise ValueError("give the container as az://<container>/ (secrets go in the environment, not the URL)")
        if protocol_of(value) not in AZURE_PROTOCOLS:
            raise ValueError(f"{value!r} is not an Azure container URL: give it as az://<container>/ (or "
                             "az://<container>/<prefix>/; the account comes from [azure] or the environment)")
        return value


# Settings that would hold a secret: refused in a file (it gets copied, committed, mailed); the secret
# belongs in the environment, and the file may name the variable.
_SECRET_SETTINGS = {
    "account_key": "account_key_env", "key": "account_key_env", "sas_token": "sas_token_env", "sas": "sas_token_env",
    "sas_url": "sas_token_env", "connection_string": "connection_string_env", "client_secret": None, "password": None,
    "secret": None, "token": None, "credential": None, "access_key": None, "secret_key": None,
    "aws_access_key_id": None, "aws_secret_access_key": None, "aws_session_token": None, "session_token": None,
}
_SECRET_TEXT = re.compile(r"(?i)(accountkey=|sharedaccesssignature=|[?&]sig=|[?&]sv=\d|aws_secret|-----begin)")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_IN_CONFIG = "secret_in_config"  # pydantic error type: load_config gives its own fix


# Words of a setting's name that say it holds a secret, whichever section it is written in (`[central] sas_token`,
# `storage_account_key` were told "unknown setting", even "did you mean 'account_key_env'?", not that a secret
# does not belong in the file)
_SECRET_WORDS = re.compile(r"(?i)(?:^|[_-])(?:secret|password|passwd|pwd|token|credentials?|sas|sig|signature)(?:$|[_-])"
                           r"|(?:account|access|storage|shared|private|api|secret)[_-]?key|connection[_-]?string|^key$")


def secret_key(key: str) -> bool:
    """Whether a setting named `key` would hold a secret (one naming the variable that holds it, *_env, does not)."""
    return key.lower() in _SECRET_SETTINGS or (not key.lower().endswith("_env") and bool(_SECRET_WORDS.search(key)))


def _secret_error(section: str, key: str) -> PydanticCustomError:
    # the variables' names are set in [azure], whichever section the secret was written in ([s3] has none)
    lower = key.lower().replace("-", "_")
    env_key = _SECRET_SETTINGS.get(lower) or (key if lower.endswith("_env") and section == "azure" else None) or next(
        (env for word, env in (("account_key", "account_key_env"), ("sas", "sas_token_env"),
                               ("connection_string", "connection_string_env")) if word in lower), None)
    aws = key.lower().startswith("aws_") or "access_key" in key.lower() or section == "s3"
    how = (f"set it in an environment variable and name that variable with {env_key} = \"VARIABLE\" in [azure] "
           "(or use the default variable)" if env_key and not aws else
           "set it in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile named by [s3] "
           "profile) instead" if aws else
           "set it in the environment (the standard variables or a profile / az login) instead")
    return PydanticCustomError(SECRET_IN_CONFIG, "{key} looks like a secret and is not read from a config file: {how}",
                               {"key": key, "how": how})


def _no_secret_keys(cls, data):
    """A setting whose name says it holds a secret, refused as one in every section (and above them)."""
    if isinstance(data, dict):
        for key in data:
            if isinstance(key, str) and key not in cls.model_fields and secret_key(key):
                raise _secret_error(getattr(cls._section, "default", None) or "", key)
    return data


class _CloudSection(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    _section = ""

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data):
        if isinstance(data, dict):
            for key, value in data.items():
                # (a user:password@ in a URL too: account_url = "https://user:pw@acct.blob..." was signed in with)
                if isinstance(value, str) and (_SECRET_TEXT.search(value) or holds_userinfo(value)):
                    raise _secret_error(cls._section.default, key)  # type: ignore[attr-defined]
        return data


class AzureSection(_CloudSection):
    """[azure]: where the account is and which environment variables hold its secrets (never the secrets)."""

    _section = "azure"
    account_url: str | None = None  # https://myacct.blob.core.windows.net, or a custom endpoint (Azurite, sovereign cloud)
    account_name: str | None = None  # -> https://<account_name>.blob.core.windows.net
    connection_string_env: str = "AZURE_STORAGE_CONNECTION_STRING"
    sas_token_env: str = "AZURE_STORAGE_SAS_TOKEN"
    account_key_env: str = "AZURE_STORAGE_KEY"

    @field_validator("connection_string_env", "sas_token_env", "account_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            # (never quoted, not even its start: what is written here in place of a variable's name is most often
            # the secret itself, an account key or a SAS signature pasted in, and its first 12 characters were shown)
            raise ValueError("is not an environment variable's name (letters, digits and _, not starting with a "
                             "digit; its value is not shown): it names the variable that holds the secret, never the "
                             "secret itself; if the secret was written here, remove it and rotate it")
        secret_variable(value)  # (its value masked wherever it turns up in a message or a log, as the defaults' are)
        return value

    @field_validator("account_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", value):
            raise ValueError("give the account's blob endpoint, e.g. https://myacct.blob.core.windows.net "
                             "(http(s)://host[:port][/account], no query)")
        return value.rstrip("/") if value else value

    @field_validator("account_name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z0-9]{1,64}$", value):
            raise ValueError("a storage account name is lowercase letters and digits (e.g. myacct)")
        return value

    @model_validator(mode="after")
    def _one_account(self) -> AzureSection:
        """account_url and account_name that name two accounts: the run signed in to account_url's, silently (the
        README's example left in place beside the site's own account_name: another account's container written to)."""
        if self.account_url and self.account_name:
            from urllib.parse import urlsplit

            parts = urlsplit(self.account_url)
            host = parts.hostname or ""
            named = parts.path.strip("/").split("/")[0] or (host.split(".")[0] if "." in host else "")
            if named.lower() != self.account_name:
                raise ValueError(f"account_url ({self.account_url}) and account_name ({self.account_name!r}) name two "
                                 "storage accounts, and the run signs in to one only: give one of them (account_url "
                                 "for an endpoint of your own: Azurite, a sovereign cloud)")
        return self


# An S3 endpoint as [s3] endpoint_url and AWS_ENDPOINT_URL(_S3) must give it: no user, password, path or query.
S3_ENDPOINT = re.compile(r"^https?://[^/?#@]+/?$")
# A region name as botocore takes it (botocore.utils.validate_region_name)
S3_REGION = re.compile(r"^(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)$")


class S3Section(_CloudSection):
    """[s3]: the standard AWS chain (environment, profile, instance role) with an optional endpoint and region."""

    _section = "s3"
    endpoint_url: str | None = None  # MinIO or another S3-compatible store; default AWS_ENDPOINT_URL, else AWS
    profile: str | None = None  # an AWS profile name (~/.aws/config, ~/.aws/credentials)
    region: str | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not S3_ENDPOINT.fullmatch(value):
            raise ValueError("give the endpoint as http(s)://host[:port]")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        # (botocore's own form of a region name: "us east 1" or " us-east-1" was taken, and every command on an s3://
        # root then failed with exit 3, "cannot reach s3://...: InvalidRegionError", told to check the URL and the
        # credentials)
        if value is not None and value.strip() and not S3_REGION.fullmatch(value):  # (blank: said as empty)
            raise ValueError(f"{value!r} is not a region name: up to 63 letters, digits and hyphens, without spaces "
                             "(e.g. us-east-1; a MinIO server's is its MINIO_REGION, us-east-1 unless set)")
        return value


class CloudSettings(BaseModel):
    """How cloud roots are signed in to: [azure] and [s3] of chorus.toml (defaults: the environment alone)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    azure: AzureSection = Field(default_factory=_defaults(AzureSection))
    s3: S3Section = Field(default_factory=_defaults(S3Section))


class ConfigFile(_Strict):
    site: SiteSection = Field(default_factory=_defaults(SiteSection))
    manifest: ManifestSection = Field(default_factory=_defaults(ManifestSection))
    run: RunSection = Field(default_factory=_defaults(RunSection))
    registry: RegistrySection = Field(default_factory=_defaults(RegistrySection))
    central: CentralSection = Field(default_factory=_defaults(CentralSection))
    patterns: dict[str, list[str]] = {}
    azure: AzureSection = Field(default_factory=_defaults(AzureSection))
    s3: S3Section = Field(default_factory=_defaults(S3Section))
    # the file it was read from, as named, and its text: where_written names a setting's line (load_config sets it)
    _source: tuple[str, str] | None = PrivateAttr(default=None)

    def where_written(self, where: str | None, what: str = "", *, site_given: bool = False,
                      db_given: bool = False, db: str | None = None,
                      given_flags: frozenset[str] | set[str] = frozenset()) -> str | None:
        """An error's `where` with the file and line of the setting it names, when that setting was read from this
        file: `[site.roots] Waveforms` -> `chorus.toml, line 6: [site.roots] Waveforms`. The checks made after the
        file was read (a root that is not there, roots inside each other, a glob or a path pattern refused, a
        manifest path that is a device) named the setting but neither the file nor the line. `site_given`,
        `db_given`: --site, --db were given (then [site] root, [manifest] db were not read); `db`: the manifest path
        used; `what`: the error's text (an exclusion glob it quotes is of [run] exclude, or of --exclude);
        `given_flags`: the options given on the command line, without their dashes ("parquet", "to"): a
        `--parquet / [manifest] parquet` is the file's setting when --parquet was not given."""
        if self._source is None or not where:
            return where
        path, text = self._source
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:  # (read before: it is valid)
            return where

        def written(loc: tuple[str, ...]) -> bool:
            value: object = data
            for part in loc:
                if not isinstance(value, dict) or part not in value:
                    return False
                value = value[part]
            return True

        def at(loc: tuple[str, ...], shown: str) -> str:
            line = setting_line(text, loc)
            return f"{path}, line {line}: {shown}" if line else f"{path}: {shown}"

        if where == SITE_ROOT:
            return at(("site", "root"), "[site] root") if not site_given and written(("site", "root")) else where
        if where.startswith("--exclude / exclude in [run]"):
            globs = self.run.exclude if written(("run", "exclude")) else []
            # (a glob is quoted as repr gives it, or as written: 'a\\b', refused for its backslash, is said 'a\b')
            return at(("run", "exclude"), "[run] exclude") if any(
                repr(g) in what or f"'{g}'" in what for g in globs) else where
        if db is not None and not db_given and where == db and self.manifest.db == db and written(("manifest", "db")):
            return at(("manifest", "db"), f"[manifest] db ({db})")
        flag = re.fullmatch(r"--([a-z-]+) / \[([a-z.]+)\] ([a-z_]+)", where)
        if flag is not None:  # ("--parquet / [manifest] parquet", "--to / [central] to": the file's when no flag gave it)
            loc = (*flag.group(2).split("."), flag.group(3))
            given = flag.group(1) in given_flags
            return at(loc, f"[{flag.group(2)}] {flag.group(3)}") if not given and written(loc) else where
        found = re.fullmatch(r"(?:(.+) )?\[([A-Za-z0-9_.-]+)\] ([A-Za-z0-9_-]+)(\[\d+\])?", where)
        if found is None or found.group(1) not in (None, path):
            return where
        loc = (*found.group(2).split("."), found.group(3))
        return at(loc, f"[{found.group(2)}] {found.group(3)}{found.group(4) or ''}") if written(loc) else where

    @property
    def cloud(self) -> CloudSettings:
        return CloudSettings.model_construct(azure=self.azure, s3=self.s3)

    @field_validator("patterns")
    @classmethod
    def _pattern_modalities(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key in value:
            if key not in MODALITIES:
                raise _unknown_modality(key)
        return value


class RunSettings(BaseModel):
    """Everything one `run` needs, after merging the file and the command line."""

    # A setting this class does not take is refused, not ignored: `validate=False` (chorus.toml's name for
    # validate_site, now taken too) or `version="nightly"` (version_label) ran as if never given.
    model_config = ConfigDict(extra="forbid", defer_build=True)

    site: str
    site_name: str | None = None
    roots: dict[str, str] = {}
    db: str
    mode: Literal["full", "append"] = "full"
    delete_list: str | None = None
    parquet: str | None = None
    workers: int = Field(default_factory=default_workers, ge=1, le=256)
    rehash: bool = False
    dry_run: bool = False
    follow_symlinks: bool = False
    racy_window_s: float = Field(default=2.0, ge=0, le=3600)  # as [run] racy_window_s is checked
    patterns: dict[str, list[str]] = {}
    version_label: str | None = None
    # run `validate` on the new (or unvalidated) version; also given as `validate`, its name in chorus.toml
    validate_site: bool = Field(default=True, validation_alias=AliasChoices("validate_site", "validate"))
    max_delete: str | int = "50%"  # see parse_max_delete
    verify_sample: float = Field(default=1.0, ge=0, le=100)  # rolling re-verification: % of the files re-read each run
    verify_max_bytes: str | int = "10GiB"  # ... at most this many bytes a run (see parse_bytes)
    # where a cloud file's MD5 comes from (frames.CLOUD_MD5_POLICIES): the storage's, else a download
    cloud_md5: Literal["stored-or-download", "download", "stored-only"] = "stored-or-download"
    cloud: CloudSettings = Field(default_factory=_defaults(CloudSettings))  # [azure], [s3]: how cloud roots are signed in to
    exclude: list[str] = []  # [run] exclude and --exclude: globs left out of the scan
    default_excludes: bool = True  # also leave out the OS-junk list (exclude.DEFAULT_EXCLUDES)
    # Slurm scale-out (shards.py): scan shard "K/N" into `staging` (no manifest write), or commit the shards in `merge`
    shard: str | None = None
    staging: str | None = None
    merge: str | None = None
    # the `run` flags given that shape a listing (cli._listing_arguments: --config, --site, --db, --exclude, ...):
    # recorded by a shard, and how a merge's message reruns a shard (None: not known, e.g. the library)
    arguments: list[str] | None = None

    if not TYPE_CHECKING:  # (type checkers and editors keep pydantic's signature: the fields by name)
        def __init__(self, **settings: object) -> None:
            try:
                super().__init__(**settings)
            except ValidationError as exc:  # (pydantic's traceback and its web page: said as what to give instead)
                raise _settings_error(exc) from None

    # Checked here as [run] checks them: a library caller's max_delete=-3 was taken and refused only inside run(),
    # as "--max-delete / max_delete in [run]", settings the caller never wrote
    # (max_delete=True too, which pydantic's lax mode took as a count of 1 file)
    _bytes = field_validator("verify_max_bytes")(RunSection._bytes.__func__)

    @field_validator("max_delete", mode="before")
    @classmethod
    def _max_delete(cls, value: object) -> object:
        if isinstance(value, (str, int, float)):
            parse_max_delete(value)
        return value

    @field_validator("site", "db", "delete_list", "parquet", "staging", "merge", mode="before")
    @classmethod
    def _path_as_text(cls, value: object, info: ValidationInfo) -> object:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value  # a pathlib path, as open_manifest takes
        if isinstance(value, str) and value.startswith("~"):  # as --db "~/m.sqlite" reads it: db="~/m.sqlite" was
            # "the manifest's folder ./~ does not exist ... mkdir -p './~'" (site was read as the home's already)
            from .errors import named
            from .urls import expand_home

            # (on the command line, the flag: `--site '~nosuch/x'` was said as "RunSettings(site=...)")
            value = expand_home(value, named(f"--{info.field_name.replace('_', '-')}",
                                             f"RunSettings({info.field_name}=...)"))
        return value

    @field_validator("roots", mode="before")
    @classmethod
    def _root_paths_as_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in value.items()}
        return value

    @field_validator("site_name")
    @classmethod
    def _printable_site_name(cls, value: str | None) -> str | None:
        return printable_name(value)

    @field_validator("staging", "merge")
    @classmethod
    def _staging_folder(cls, value: str | None, info) -> str | None:
        from .urls import staging_folder

        # a UsageError (not a ValueError): it leaves pydantic as it is, naming the option and what it needs
        return value if value is None else staging_folder(value, "--" + info.field_name)


LIBRARY_HELP = 'the README\'s section "Library"'


def _settings_error(exc: ValidationError) -> SettingError:
    """What a library caller gave RunSettings that it does not take, as a SettingError naming the keyword."""
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "settings"
    known = [*RunSettings.model_fields, "validate"]
    if first["type"] == "extra_forbidden":
        # A key unknown inside a table setting (cloud={"azure": {"acount": ...}}): named with its table and checked
        # against that table's keys ("cloud is not a setting RunSettings takes; did you mean 'cloud'?" was said)
        *table, key = [str(part) for part in first["loc"]] or [name]
        model, taker = RunSettings, "RunSettings"
        for part in table:
            annotation = model.model_fields[part].annotation if part in model.model_fields else None
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                break
            model, taker = annotation, '.'.join(table)
        else:
            if table:
                name, known = ".".join([*table, key]), list(model.model_fields)
        meant = _close(key if table else name, known)
        problem = f"is not a setting {taker} takes" + (f"; did you mean {meant!r}?" if meant else "")
        fix = (f"rename it to {meant}" if meant else "remove it") + f" (the settings: {', '.join(known)}; {LIBRARY_HELP})"
    elif first["type"] == "missing":
        problem = "is missing: RunSettings needs the site's folder (site) and the manifest's path (db)"
        fix = f'give it, as in RunSettings(site="/data/site", db="manifest.sqlite") ({LIBRARY_HELP})'
    else:
        loc, problem = _problem(exc, lambda value: repr(value)[:80])
        name = ".".join(str(p) for p in loc) or name
        fix = f"give {name.split('.')[0]} a value it takes ({CONFIG_HELP}, where chorus.toml names it alike)"
    return SettingError(f"RunSettings: {name} {problem}", setting=name.split(".")[0], problem=problem,
                        where=f"RunSettings({name.split('.')[0]}=...)", fix=fix)


def _known_settings(loc: tuple) -> list[str]:
    """The settings chorus.toml accepts where `loc` points (() for the sections), as written in the file."""
    model: type[BaseModel] = ConfigFile
    for part in loc:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [field.alias or name for name, field in model.model_fields.items()]


# Other words for a setting, as a site engineer writes them (from another tool's config, or from memory): no
# spelling is close, so `database = ...` was told only "unknown setting", and `excludes` "did you mean
# 'default_excludes'?", an on/off setting that then refused the list. The first of a word's settings the [section]
# has is the one meant.
_OTHER_WORDS = {
    "database": ("db",), "sqlite": ("db",), "manifest": ("db",), "file": ("db",), "path": ("root", "db"),
    "dir": ("root",), "directory": ("root",), "folder": ("root",), "site": ("root",), "site_root": ("root",),
    "threads": ("workers",), "jobs": ("workers",), "processes": ("workers",), "procs": ("workers",),
    "cpus": ("workers",), "parallel": ("workers",), "ignore": ("exclude",), "ignores": ("exclude",),
    "excluded": ("exclude",), "container": ("to",), "destination": ("to",), "dest": ("to",),
}


def _close(word: str, choices: list[str]) -> str | None:
    """The choice `word` is most likely a misspelling of: itself in the singular or plural (`excludes`: exclude),
    another word for it (_OTHER_WORDS), else difflib's close matches, then the most shared letters."""
    from collections import Counter
    from difflib import get_close_matches

    lower = word.lower().replace("-", "_")
    number = next((c for c in choices if c.lower() in (lower.removesuffix("s"), lower + "s") and c.lower() != lower),
                  None)
    if number is not None:
        return number
    other = next((c for c in _OTHER_WORDS.get(lower, ()) if c in choices), None)
    if other is not None:
        return other
    matches = get_close_matches(word, choices, n=5)
    return max(matches, key=lambda choice: sum((Counter(word) & Counter(choice)).values())) if matches else None


# pydantic's type errors, as the kind of TOML value the setting takes
_KINDS = {"int_type": "a whole number", "int_from_float": "a whole number", "float_type": "a number",
          "bool_type": "true or false", "string_type": "text in quotes", "list_type": 'a list, such as ["a", "b"]',
          "dict_type": "a table of settings", "model_type": "a table of settings ([section])"}


def _as_toml(value: object) -> str:
    """A value as TOML writes it, for a message (json's NaN and Infinity are no TOML: nan, inf, -inf; a date or time
    is written bare: `name = 2024-01-01` was told it "should be text in quotes, not "2024-01-01"", as if it were)."""
    import datetime

    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    if isinstance(value, (datetime.date, datetime.time)):  # (datetime is a date)
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_as_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)}: {_as_toml(item)}" for key, item in value.items()) + "}"
    return json.dumps(value, default=str)


def _number_in_quotes(kind: str, value: object) -> str | None:
    """The number a setting that takes one was given as text ("8", "2.5", "5%": a percentage as max_delete writes it),
    as TOML writes it bare; else None."""
    import math

    if kind not in ("int_type", "float_type") or not isinstance(value, str):
        return None
    text = value.strip()
    bare = text.removesuffix("%").strip() if kind == "float_type" else text
    try:
        number = float(bare) if kind == "float_type" else int(bare)
    except ValueError:
        return None
    return bare if math.isfinite(number) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", bare) else None


def _problem(exc: ValidationError, spell) -> tuple[tuple, str]:
    """Where a value `exc` refuses is (the setting's location) and what is wrong with it, in a person's words, not
    pydantic's ("Input should be a valid integer"); the value as `spell` writes it (_as_toml, or repr for Python)."""
    first = exc.errors()[0]
    message = first["msg"].removeprefix("Value error, ")  # (pydantic's words, not the user's)
    if any(str(part).endswith("_env") for part in first["loc"]):
        # A setting that names the variable holding a secret (account_key_env, ...): what was written in its place is
        # most often the secret itself, never quoted (account_key_env = ["<key>"] was shown whole)
        def spell(value: object) -> str:
            return "what was written (not shown: it may be the secret itself)"
    branches = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false"}
    loc = first["loc"]
    if first["type"] == UNKNOWN_MODALITY:  # a key of the table: its own line
        loc = (*loc, first["ctx"]["key"])
    if len(loc) > 1 and loc[-1] in branches:  # a union (max_delete: str | int) names its member: not a setting
        said = [branches[e["loc"][-1]] for e in exc.errors() if e["loc"][:-1] == loc[:-1] and e["loc"][-1] in branches]
        message = f"should be {' or '.join(said)}, not {spell(first['input'])}"  # as TOML spells it
        loc = loc[:-1]
    elif (first["type"] in ("model_type", "dict_type") and spell is _as_toml and isinstance(first.get("input"), list)
          and first["input"] and all(isinstance(item, dict) for item in first["input"])):
        # `[[run]]`, an array of tables: it was "should be a table of settings ([section]), not [{"workers": 2}]",
        # on a line said as [run], without the brackets that were wrong
        name = ".".join(str(p) for p in loc)
        message = (f"is a list of tables (written [[{name}]], with double brackets: an array of tables), not one "
                   f"table; write [{name}], with single brackets" + (
                       f", once (it is written {len(first['input'])} times: merge their settings)"
                       if len(first["input"]) > 1 else ""))
    elif first["type"] in _KINDS:  # "Input should be a valid integer": of what was written, and what it is
        message = f"should be {_KINDS[first['type']]}, not {spell(first['input'])}"
        written = _number_in_quotes(first["type"], first.get("input")) if spell is _as_toml and loc else None
        if written is not None:  # (verify_sample = "5%", as max_delete = "50%" is written: what to write instead)
            message += f"; write {loc[-1]} = {written}" + (
                ", without quotes" + (" or %" if str(first["input"]).strip().endswith("%") else ""))
    elif first["type"] != "value_error" and isinstance(first.get("input"), float) and first["input"] != first["input"]:
        # TOML's nan is in no range
        # (it said "should be less than or equal to 3600, not NaN" of racy_window_s = nan: nan is no number)
        message = f"should be a number, not {spell(first['input'])}"
    elif first["type"] not in ("value_error", UNKNOWN_MODALITY) and "input" in first:  # a range or a choice: and what was given
        message = f"{message.removeprefix('Input ')}, not {spell(first['input'])}"
    if len(loc) > 1 and isinstance(loc[-1], int):  # an entry of a list (exclude = [1]): the list is the setting
        message, loc = f"its entry {loc[-1] + 1} {message}", loc[:-1]
    return tuple(loc), message


def _empty_settings(data: dict, prefix: str = "") -> list[tuple[str, bool]]:
    """The settings of a TOML table (dotted, as written) whose text is empty or blank (False), or that list such
    a text (True)."""
    found = []
    for key, value in data.items():
        setting = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _empty_settings(value, f"{setting}.")
        elif isinstance(value, str) and not value.strip():
            found.append((setting, False))
        elif isinstance(value, list) and any(isinstance(v, str) and not v.strip() for v in value):
            found.append((setting, True))
    return found


def _refuse_overlapping_ranges(registry: RegistrySection, written: object, path: Path, text: str) -> None:
    """[registry] ranges that share ids are refused as the file is read, naming the line of each (or saying it is the
    default): an image accession and a waveform session could be given one proc_id; `registry` gave each the ids
    after the other's, so which ids a kind got depended on which was allocated first, and the site's procedure rows
    and the centre's joins could not tell the kinds apart by range."""
    given = written if isinstance(written, dict) else {}
    ranges = [(key, getattr(registry, key)) for key in ("image_proc_ids", "waveform_proc_ids")]
    (a, (a_first, a_last)), (b, (b_first, b_last)) = ranges
    if a_last < b_first or b_last < a_first:
        return

    def said(key: str, first: int, last: int) -> str:
        line = setting_line(text, ("registry", key)) if key in given else None
        return f"{key} = [{first}, {last}] " + (f"(line {line})" if line else "(the default: not written in the file)")

    lines = [setting_line(text, ("registry", key)) for key in (a, b) if key in given]
    shared = f"{max(a_first, b_first)}-{min(a_last, b_last)}"
    raise ConfigError(f"[registry] ranges overlap: {said(a, a_first, a_last)} and {said(b, b_first, b_last)} share the "
                      f"ids {shared}, so an image accession and a waveform session could be given one proc_id",
                      where=f"{path}, line {max(filter(None, lines))}: [registry]" if any(lines) else f"{path}: [registry]",
                      fix="give the two ranges ids apart (e.g. image_proc_ids = [2000000000, 2000999999], "
                          "waveform_proc_ids = [2001000000, 2999999999]); a range the manifest already gave ids from "
                          f"should keep holding them ({CONFIG_HELP})")


def load_config(path: str | os.PathLike[str]) -> ConfigFile:
    """Read and validate chorus.toml; paths in it become absolute."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):  # a notebook's None: said, not a TypeError
        raise ConfigError(f"load_config takes the path of a chorus.toml, not {type(path).__name__} {path!r}",
                          where="load_config(path)", fix='give the file\'s path, such as load_config("chorus.toml")')
    path = Path(path)
    data, text = read_toml_text(path)

    def where(loc: tuple, shown: str, top: bool = False) -> str:
        """Where in the file the setting at `loc` is, as a message names it: with the line it is written on."""
        line = setting_line(text, tuple(str(p) for p in loc))
        return (f"{path}, line {line}" if line else str(path)) + (", " if top else (": " if line else " ")) + shown
    if not data:  # (left empty by `import-config CONFIG > chorus.toml` that failed: the shell empties it first)
        import logging

        logging.getLogger("chorus_batch").warning(
            f"the config file {path} holds no settings (it is empty, or holds only comments): every setting is its "
            "default; write its settings in it (every setting: the README's section \"Configuration: chorus.toml\"), "
            "or remove it")
    upstream = {"configuration", "journal", "central_path", "site_path"} & set(data)
    if upstream and not {"site", "manifest", "run", "central"} & set(data):
        raise ConfigError(f"{path} is a chorus-upload config.toml (it has [{'], ['.join(sorted(upstream))}]), not a "
                          "chorus.toml", where=str(path),
                          fix=f"convert it: chorus-batch import-config {path} --out chorus.toml, then pass --config "
                              "chorus.toml") from None
    try:
        config = ConfigFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        setting = ".".join(str(p) for p in first["loc"])
        if first["type"] == SECRET_IN_CONFIG:
            key = first.get("ctx", {}).get("key", "")
            raise ConfigError(
                # (not "'s3.password': a ...": the log and message scrubber reads `password': a` as a secret's value
                # and said "*** secret does not belong")
                f"refused setting {'.'.join(filter(None, [setting, key])) if key else setting!r} (its value is not "
                "shown): a secret does not belong in a config file",
                where=where((*first["loc"], key), f"[{setting}] {key}".rstrip()) if setting
                else where((key,), f"top level: {key}", top=True),
                fix=f"remove it from {path.name}; {first['msg'].split(': ', 1)[-1]}",
            ) from None
        if first["type"] == "extra_forbidden":
            known = _known_settings(first["loc"][:-1])
            meant = _close(str(first["loc"][-1]), known)
            prefix = ".".join(str(p) for p in first["loc"][:-1])
            meant = f"{prefix}.{meant}" if prefix and meant else meant
            key = str(first["loc"][-1])
            homes = [] if prefix else [f"{s}.{key}" for s in known if key in _known_settings((s,))]
            if not prefix and isinstance(data.get(key), dict):  # a [section] (`[runn]`, `[Run]`): said as one
                raise ConfigError(
                    f"unknown section [{key}]" + (f"; did you mean [{meant}]?" if meant else ""), where=where((key,), f"[{key}]"),
                    fix=(f"rename it to [{meant}]" if meant else "remove it") + f" ({CONFIG_HELP}; sections: "
                        + ", ".join(known) + ")",
                ) from None
            if homes:  # a setting written above every [section] (workers = 8 before [run]) is at the top level
                sections = " or ".join(f"[{home.split('.')[0]}]" for home in homes)
                raise ConfigError(
                    f"unknown setting {key!r} at the top of the file, before any [section]; did you mean "
                    + " or ".join(repr(home) for home in homes) + "?",
                    where=where((key,), "top level (above the first [section])", top=True),
                    fix=f"move it under {sections} (a setting belongs to the [section] above it; {CONFIG_HELP})",
                ) from None
            if not prefix and not meant:  # (`wrkers = 8` above every section was placed in a section [wrkers])
                nested = {f"{s}.{k}": k for s in known for k in _known_settings((s,))}
                close = _close(key, list(dict.fromkeys(nested.values())))
                homes = [home for home, k in nested.items() if k == close]
                raise ConfigError(
                    f"unknown setting {key!r} at the top of the file, before any [section]"
                    + ("; did you mean " + " or ".join(repr(home) for home in homes) + "?" if homes else ""),
                    where=where((key,), "top level (above the first [section])", top=True),
                    fix=("rename it and move it under " + " or ".join(f"[{home.split('.')[0]}]" for home in homes)
                         if homes else "remove it")
                        + f" (a setting belongs to the [section] above it; {CONFIG_HELP}; sections: "
                        + ", ".join(known) + ")",
                ) from None
            written = data
            for part in first["loc"]:
                written = written.get(part) if isinstance(written, dict) else None
            top = _known_settings(())
            if isinstance(written, dict) and key in top and written:  # [run] run.workers = 8: run.run.workers
                inner = next(iter(written))
                dotted = f"{key}.{inner}"
                home = f"[{key}]" + (f" as {inner} = ..." if inner in _known_settings((key,)) else "")
                raise ConfigError(
                    f"unknown setting {prefix + '.' + dotted!r}: {dotted} = ... under [{prefix}] is read as "
                    f"{prefix}.{dotted} (a key with dots under a [section] adds to the section's name)",
                    where=where((*first["loc"], inner), f"[{prefix}] {dotted}"),
                    fix=f"write it under {home}, or as {dotted} = ... above the first [section] ({CONFIG_HELP})",
                ) from None
            bare = _close(key, known)  # as it is written in its [section]
            section_data = data
            for part in first["loc"][:-1]:
                section_data = section_data.get(part) if isinstance(section_data, dict) else None
            if bare and isinstance(section_data, dict) and bare in section_data:
                # (`worker = 4` beside `workers = 8` was told to rename it to 'workers': a setting given twice)
                raise ConfigError(
                    f"unknown setting {setting!r}, beside {meant!r}, which is also set",
                    where=where(first["loc"], f"[{prefix}] {key}") if prefix else where((key,), f"top level: {key}", top=True),
                    fix=f"remove {key} (the run reads {bare}), or remove {bare} and rename {key} to it ({CONFIG_HELP})",
                ) from None
            # a setting of another [section] (`exclude` under [site], `db` under [site]): it was "remove it", so the
            # setting was dropped rather than moved where the run reads it
            homes = [] if bare else [f"{s}.{key}" for s in top if s != prefix and key in _known_settings((s,))]
            if homes:
                raise ConfigError(
                    f"unknown setting {setting!r}: {key} is a setting of "
                    + " or ".join(f"[{home.rsplit('.', 1)[0]}]" for home in homes) + f", not of [{prefix}]; did you "
                    "mean " + " or ".join(repr(home) for home in homes) + "?",
                    where=where(first["loc"], f"[{prefix}] {key}"),
                    fix=f"move {key} = ... under " + " or ".join(f"[{home.rsplit('.', 1)[0]}]" for home in homes)
                        + f" (a setting belongs to the [section] above it; {CONFIG_HELP})",
                ) from None
            # misspelt and under another [section] (`wrkers = 4` under [site]): it was "remove it", as if there were
            # no such setting anywhere
            nested = {f"{s}.{k}": k for s in top if s != prefix for k in _known_settings((s,))}
            close = None if bare or not prefix else _close(key, list(dict.fromkeys(nested.values())))
            homes = [home for home, k in nested.items() if k == close]
            if homes:
                sections = " or ".join(f"[{home.rsplit('.', 1)[0]}]" for home in homes)
                raise ConfigError(
                    f"unknown setting {setting!r}; did you mean " + " or ".join(repr(home) for home in homes)
                    + f"? ({close} is a setting of {sections}, not of [{prefix}])",
                    where=where(first["loc"], f"[{prefix}] {key}"),
                    fix=f"rename it to {close} and move it under {sections} (a setting belongs to the [section] above "
                        f"it; {CONFIG_HELP})",
                ) from None
            raise ConfigError(
                f"unknown setting {setting!r}" + (f"; did you mean {meant!r}?" if meant else ""),
                where=where(first["loc"], f"[{prefix or setting}]" + (f" {key}" if prefix else "")),
                # `workers` under [run], not `run.workers` there (that would be [run] run.workers: run.run.workers)
                fix=(f"rename it to {bare!r}" + (f" in [{prefix}]" if prefix else "") if bare else "remove it")
                    + f" ({CONFIG_HELP}; known here: " + ", ".join(known) + ")",
            ) from None
        loc, message = _problem(exc, _as_toml)
        setting = ".".join(str(p) for p in loc)
        section, key = (".".join(str(p) for p in loc[:-1]), str(loc[-1])) if len(loc) > 1 else (setting, "")
        raise ConfigError(
            f"invalid setting {setting!r}: {message}",
            where=where(loc, f"[{section}] {key}".rstrip()),
            fix=f"correct or remove that setting ({CONFIG_HELP})",
        ) from None
    # Relative paths are from the file's folder; a config read from a pipe (`--config <(envsubst < chorus.in)`) has
    # none (it was /proc/<pid>/fd: "site root is not a readable directory: /proc/11836/fd/site"): the current one.
    # A config reached through a symbolic link (./chorus.toml -> /etc/chorus/site-a.toml, or a folder link such as
    # /opt/chorus/current -> releases/v3) takes them from the folder it was named in, as the shell shows it: they were
    # taken from the link's target, so `db = "chorus_manifest.sqlite"` beside the link was a new manifest in
    # /etc/chorus (or in the release folder, another one after each deploy). (slurm._absolute names it alike.)
    # One named under /dev or /proc (`--config /dev/stdin < chorus.toml`: a file descriptor, its folder no folder of
    # the user's: "site root ... /dev/site does not exist") is read as a pipe is.
    named = Path(os.path.abspath(path))
    base = named.parent if path.is_file() and named.parts[1:2] not in (("dev",), ("proc",)) else Path.cwd()
    # A text setting written empty is refused, whichever it is: an empty path would become the config file's own
    # folder (the site, or snapshots and a manifest written there), and `name = ""` was taken as no name at all
    # while `root = ""` was refused. (Validation above passed: every setting here is a known one.)
    paths = {"site.root", "manifest.db", "manifest.parquet"}
    for setting, listed in _empty_settings(data):
        section, key = setting.rsplit(".", 1)
        is_path = setting in paths or section == "site.roots"
        raise ConfigError(f"setting {setting!r} " + ("lists an empty text" if listed else "is empty"),
                          where=where(tuple(setting.split(".")), f"[{section}] {key}"),
                          fix=("remove the empty entry from the list" if listed else
                               (f"give a path (relative to {base})" if is_path else f"give {key} a value")
                               + ", or remove the line for the default") + f" ({CONFIG_HELP})")
    _refuse_overlapping_ranges(config.registry, data.get("registry"), path, text)
    config._source = (str(path), text)
    try:
        if config.patterns:  # checked here, where the file is named, not when a run has started (polars: only then)
            from .classify import build_patterns

            build_patterns(config.patterns, str(path))
        config.site.root = resolve_path(base, config.site.root, f"{path} [site] root")
        config.site.roots = {k: resolve_path(base, v, f"{path} [site.roots] {k}")  # type: ignore[misc]
                             for k, v in config.site.roots.items()}
        # A Windows path in what a run makes (a chorus.toml copied from the site's Windows machine): a manifest or snapshot
        # folder made under that name beside the config, every file added again. (A site root so written is refused when
        # it is read: not there; and import-config keeps it, saying so.)
        from .urls import refuse_windows_path

        written = {"db": config.manifest.db, "parquet": config.manifest.parquet}
        config.manifest.db = resolve_path(base, config.manifest.db, f"{path} [manifest] db")
        config.manifest.parquet = resolve_path(base, config.manifest.parquet, f"{path} [manifest] parquet")
        for key, value in written.items():
            if value is not None and "://" not in value:
                refuse_windows_path(value, f"{path} [manifest] {key}", getattr(config.manifest, key))
        if config.central.to is not None:
            # (the container as --to's is checked: `to = "az://UPPER/"` or "az://a_b/" was taken, and refused only by
            # `upload` or `verify`, after the manifest was opened, without the file's line, and never by a nightly run)
            from .urls import check_location

            check_location(config.central.to, f"{path} [central] to")
    except ChorusError as exc:  # (a pattern, a path with a NUL, a $VARIABLE or a Windows path: with its line)
        exc.where = config.where_written(exc.where, exc.what)
        raise
    return config


SITE_ROOT = "--site / [site] root"


def named_roots(site: str | None, roots: dict[str, str]) -> list[tuple[str | None, str, str | None]]:
    """The site root, then each [site.roots] folder, as (location, where it was given, modality): what every
    check and message about roots goes through, so they name them alike."""
    return [(site, SITE_ROOT, None),
            *((location, f"[site.roots] {modality}", modality) for modality, location in roots.items())]


def check_roots(settings: RunSettings) -> None:
    """Refuse roots that are one tree listed twice: the same folder, or one inside another (unless an exclusion
    glob leaves the inner one out of the outer). Every root is listed whole, so such a site tracked the same
    files twice (a scan error for every file each night, or the inner root's files again at the outer root's
    top level, uploaded twice)."""
    import re

    from .exclude import glob_to_regex
    from .urls import local_path

    def place(location: str) -> str:
        path = local_path(location)  # a file:// URL and the plain path of one folder are the same place
        return location.rstrip("/") if path is None else os.path.realpath(path)

    named = [(what, location) for location, what, _ in named_roots(settings.site, settings.roots)]
    # a glob excludes a folder's files when it matches the folder (exclude.glob_to_regex: as in .gitignore)
    user = [re.compile(glob_to_regex(p)) for p in settings.exclude]
    for i, (what, location) in enumerate(named):
        for other, other_location in named[:i]:
            a, b = place(location), place(other_location)
            if a == b:
                raise ConfigError(f"{what} is the same folder as {other}: {location}", where=what,
                                  fix="remove it (the root before it already holds its files), or point it at the "
                                      f"tree that holds that modality's files ({CONFIG_HELP})")
            for inner, inner_what, outer, outer_what in ((a, what, b, other), (b, other, a, what)):
                sep = "/" if "://" in outer or os.sep == "/" else os.sep
                if inner.startswith(outer.rstrip(sep) + sep):
                    rel = inner[len(outer.rstrip(sep)) + 1:].replace(os.sep, "/")
                    if any(r.search(f"{rel}/") for r in user):
                        continue  # the outer root's listing leaves the inner tree out
                    raise ConfigError(
                        f"{inner_what} ({inner}) lies inside {outer_what} ({outer}): its files would be tracked twice, "
                        f"once as {rel}/...", where=inner_what,
                        fix=f"point {inner_what} at a tree outside the other roots, or leave it out of {outer_what} "
                            f"with an exclusion glob such as \"{rel}/*\" in [run] exclude ({CONFIG_HELP})")
