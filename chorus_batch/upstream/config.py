"""A chorus-upload config.toml as a chorus.toml: `chorus-batch import-config`.

chorus-upload (github.com/chorus-ai/chorus-extract-upload) reads a config.toml with the sections
[configuration], [journal], [central_path] and [site_path]; its older releases kept `journaling_mode` in
[configuration] and the journal's paths as [journal] path / local_path, the current one has [journal]
journaling_mode, [journal.local] and [journal.source], and puts sign-in keys in `.auth` subtables
(older configs put them directly in the section). What becomes what:

  site_path.default.path                          [site] root
  site_path.<Modality>.path, if not the default   [site.roots] <Modality> (OMOP, Metadata, Waveforms, Images)
  journal.journaling_mode (or configuration.)     [run] mode: "full" (also the old "snapshot") or "append";
                                                  not set: "append", chorus-upload's default
  central_path.path = "az://c/p" (or azure_container)   [central] to = "az://c/p/"
  central_path.path = "https://ACCOUNT.blob.core.windows.net/c/p"   [central] to = "az://c/p/" and [azure] account_url
  *.auth azure_account_url / azure_account_name   [azure] account_url / account_name
  *.auth auth_mode = "login"                      nothing to set: DefaultAzureCredential (a comment says so)
  *.auth azure_sas_token, azure_account_key,      [azure] sas_token_env / account_key_env / connection_string_env:
         azure_(storage_)connection_string       the NAME of the environment variable; never the value
  *.auth aws_profile                              [s3] profile (aws_* keys: the standard AWS variables)
  site_path.<Modality>.pattern, versioned,        not translated: a warning, and a commented-out starting
         omop_per_patient                         point under [patterns]

A secret is never copied into the text nor shown in a warning (only its key, masked); each one found is
named in a warning that says to rotate it and which environment variable takes it; a key that names a secret
holds one whatever its value's type (text, table, array), and a URL's password or query is named as what it is.
A Windows site path (C:\\..., \\\\server\\share) is kept, with a warning when converted elsewhere. A key that is not
understood is named in a warning; one that chorus-batch does not need is named in the text's header:
nothing is dropped silently. The text is checked with chorus.toml's own validation before it is returned.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import tomllib
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..config import _SECRET_SETTINGS, _SECRET_TEXT, MODALITIES, ConfigFile
from ..config_file import decode_toml, explain_toml_error, not_utf8, read_bytes, why_unreadable
from ..errors import UsageError, WriteError
from ..fsutil import missing_folder, write_private

SECTIONS = ("configuration", "journal", "central_path", "site_path")
DEFAULT_DB = "chorus_manifest.sqlite"
# chorus-upload's pattern of each modality when its config gives none (local_ops._get_modality_pattern),
# relative to the modality's root; its `parse` patterns are case-insensitive.
UPSTREAM_PATTERNS = {"OMOP": "OMOP/{filepath}", "Metadata": "Metadata/{filepath}",
                     "Waveforms": "{patient_id:w}/Waveforms/{filepath}", "Images": "{patient_id:w}/Images/{filepath}"}
OMOP_PER_PATIENT = "{patient_id:w}/OMOP/{filepath}"  # its OMOP pattern with omop_per_patient = true
# What {filepath} stands for in chorus-batch's current layout of each modality: the end of the
# modality's current pattern in classify.DEFAULT_PATTERNS, after "<Modality>/".
_TAILS = {
    "OMOP": r"(?P<session>.+)$",
    "Metadata": r"(?P<session>.+)$",
    "Waveforms": r"(?P<category>Telemetry|EEG)/(?P<session>[^/]+)/(?P<file>[^/]+)$",  # (Waveform File Format v2.1)
    "Images": r"(?P<category>[A-Za-z0-9]+)/(?P<session>[^/]+)/[^/]+/(?P<segment>[^/]+)\.(?i:dcm)$",
}
# [run] exclude globs that leave out a modality chorus-upload did not track (default layout)
_EXCLUDES = {"OMOP": "OMOP/*", "Metadata": "Metadata/*", "Waveforms": "*/Waveforms/*", "Images": "*/Images/*"}

# Sign-in keys chorus-upload reads from a `.auth` table (or, in older configs, the section itself).
# (The connection string: azure_connection_string in its config template, azure_storage_connection_string in the
# code that signs in, storage_helper's __make_az_client: a site may have written either.)
_AUTH_KEYS = ("auth_mode", "azure_account_url", "azure_account_name", "azure_sas_token", "azure_account_key",
              "azure_connection_string", "azure_storage_connection_string", "aws_access_key_id",
              "aws_secret_access_key", "aws_session_token", "aws_profile", "s3_container")
# Its Azure secrets: chorus.toml's setting naming the variable, the variable, what it is.
AZURE_SECRETS = {
    "azure_connection_string": ("connection_string_env", "AZURE_STORAGE_CONNECTION_STRING", "connection string"),
    "azure_storage_connection_string": ("connection_string_env", "AZURE_STORAGE_CONNECTION_STRING",
                                        "connection string"),
    "azure_sas_token": ("sas_token_env", "AZURE_STORAGE_SAS_TOKEN", "SAS token"),
    "azure_account_key": ("account_key_env", "AZURE_STORAGE_KEY", "account key"),
}
AWS_SECRETS = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
               "aws_session_token": "AWS_SESSION_TOKEN"}
# Other key names that hold a secret (whatever section they are in).
_SECRET_NAME = re.compile(r"(?i)(secret|passw|token|credential|(^|_)key$|(^|_)sas($|_)|connection_?string)")
_AZURE_SCHEMES = ("az://", "abfs://", "abfss://")

# The keys chorus-upload knows, by section: None is a value, a dict a table; "*" any name.
_AUTH: dict[str, Any] = dict.fromkeys(_AUTH_KEYS)
_SITE: dict[str, Any] = {"path": None, "pattern": None, "versioned": None, "omop_per_patient": None,
                         "upload_method": None, "auth": _AUTH, **_AUTH}
_SCHEMA: dict[str, Any] = {
    "configuration": dict.fromkeys(("supported_modalities", "journaling_mode", "page_size", "num_threads", "profile",
                                    "upload_method", "upload_methods")),
    "journal": {"journaling_mode": None, "path": None, "local_path": None, "upload_method": None,
                "local": {"path": None}, "source": {"path": None, "upload_method": None, "auth": _AUTH, **_AUTH},
                **_AUTH},
    "central_path": {"path": None, "azure_container": None, "patient_first": None, "upload_method": None,
                     "auth": _AUTH, **_AUTH},
    "site_path": {"*": _SITE},
}
# Known keys chorus-batch has no use for: named in the text's header.
_UNNEEDED = re.compile(r"^(configuration\.(page_size|num_threads|profile|upload_methods?)|.*\.upload_method"
                       r"|central_path\.(azure_container|patient_first)|.*\.s3_container"
                       r"|journal\.(path|local_path|local\.path|source\.path))$")
# Escaped with a backslash in a regex: valid in both Rust's and Python's syntax (as in exclude.py).
_META = set("\\.+*?()|[]{}^$#&-~")
_FIELD = re.compile(r"\{([^{}:]*)(?::([^{}]*))?\}")


@dataclass
class Converted:
    """The chorus.toml text and what could not be converted as it was (each warning names the file)."""

    text: str
    warnings: list[str] = field(default_factory=list)


class _Secret:
    """A secret's place in the config once it is taken out (the value is kept only to check the output)."""

    def __init__(self, empty: bool):
        self.empty = empty


def convert_config(path: str | Path) -> Converted:
    """Read chorus-upload's config.toml at `path` and return the equivalent chorus.toml text with warnings.
    Raises UsageError when the file cannot be read, is not TOML, or is not a chorus-upload config."""
    path = Path(path)
    return _Converter(path, _read(path)).convert()


def _read(path: Path) -> dict:
    fix = "pass the path of chorus-upload's config.toml (by default in its chorus_upload/ folder)"
    try:
        raw = read_bytes(path)  # (a named pipe nothing writes to, a device: refused, not waited on)
    except FileNotFoundError:
        raise UsageError(f"chorus-upload config not found: {path}", where=str(path), fix=fix) from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not chorus-upload's config.toml", where=str(path), fix=fix) from None
    except OSError as exc:
        said, why = why_unreadable(path, exc, "import-config")
        raise UsageError(f"cannot read {path}: {said}", where=str(path), fix=why) from None
    try:
        text = decode_toml(raw, path)  # (UTF-16 with a byte-order mark too: PowerShell 5's `>`, Notepad's "Unicode")
    except UnicodeDecodeError as exc:
        if b"\0" in raw[:8192]:  # (a journal.db, a binary: not a config at all)
            raise UsageError(f"{path} is not a text file (not UTF-8 at byte {exc.start})", where=str(path),
                             fix=fix) from None
        # A config saved in Windows-1252 (an accented site path): it said "not a text file", and to pass the config
        said, where = not_utf8(path, exc)
        raise UsageError(said, where=where, fix="save the file as UTF-8 (the TOML standard; chorus-upload could not "
                                                "have read it either) and run again") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # said as chorus.toml's errors are (which value, on which line), never with a line of the file: secrets
        what, where, fix = explain_toml_error(text, exc, Path(path), show_values=False)
        raise UsageError(f"{path} is not valid TOML: {what}", where=where,
                         fix=f"{fix} (chorus-upload could not have read it either)") from None
    if not any(section in data for section in SECTIONS):
        ours = [name for name in ("site", "manifest", "run", "central", "azure") if name in data]
        raise UsageError(
            f"{path} is not a chorus-upload config: it has none of the sections [{'], ['.join(SECTIONS)}]",
            where=str(path),
            fix=("it looks like chorus-batch's own chorus.toml already (it has [" + "], [".join(ours) + "]): use it "
                 "with --config" if ours else fix),
        )
    return data


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; TOML also wants DEL escaped)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _literal(regex: str) -> str:
    """A regex as a TOML literal string (no escaping of backslashes) when it can be one."""
    return f"'{regex}'" if "'" not in regex and not re.search(r"[\x00-\x1f\x7f]", regex) else _q(regex)


def _scalars(value: Any) -> list[Any]:
    """The values inside a value (a table's, an array's, recursively), or the value itself."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _scalars(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _scalars(item)]
    return [value]


def _empty(value: Any) -> bool:
    return all(leaf in ("", None) for leaf in _scalars(value))


def _mask(value: object) -> str:
    """A secret as it may be shown: its kind and size at most, never a character of it."""
    if isinstance(value, str):
        return f"**** ({len(value)} characters, not shown)"
    if isinstance(value, dict):
        return "**** (a table, not shown)"
    if isinstance(value, list):
        return f"**** (an array of {len(value)} value{'s' if len(value) != 1 else ''}, not shown)"
    return "**** (not shown)"


def _secret_key(key: str) -> bool:
    """Whether a key's name says it holds a secret (its value is one, whatever its type)."""
    name = key.lower()
    return name in AZURE_SECRETS or name in AWS_SECRETS or name in _SECRET_SETTINGS or bool(_SECRET_NAME.search(name))


def url_secrets(url: str) -> tuple[str, str | None, str | None, str | None]:
    """(the URL without its user:password and its query, the user, the password, the query); other text
    as it is. A password holding "/", "?" or "#" (not allowed unescaped, but written) runs to the last "@". A user
    alone before the host (https://TOKEN@host/..., as git and HTTP clients send a token) is the secret: given as the
    password, with no user (it was copied into chorus.toml and kept in the manifest as it was). Not in az://, abfs://
    and abfss:// URLs, where CONTAINER@ACCOUNT names a container."""
    if "://" not in url:
        return url, None, None, None
    scheme, rest = url.split("://", 1)
    user = password = None
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        at = authority.rindex("@")
        if ":" in rest[:at]:
            user, password = rest[:at].split(":", 1)
            rest = rest[at + 1:]
        elif not url.lower().startswith(_AZURE_SCHEMES):
            password, rest = rest[:at], rest[at + 1:]
    elif "@" in rest and re.match(r"[^:/?#@]*:(?!\d*(?:[/?#]|$))", rest):  # user:pass/word@host, not host:port
        at = rest.rindex("@")
        user, password = rest[:at].split(":", 1)
        rest = rest[at + 1:]
    rest, mark, query = rest.partition("?")
    return f"{scheme}://{rest}", user, password or None, (query or None) if mark else None


# A path chorus-upload ran with on Windows: a drive letter (C:\data, C:/data) or a UNC path (\\server\share).
_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:|\\\\|[\\/]{2}[^\\/]+\\)")


def _windows_path(value: str) -> bool:
    return bool(_WINDOWS_PATH.match(value))


def _is_url(value: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value))


def _relative(value: str) -> bool:
    return not (_is_url(value) or value.startswith("~") or PurePosixPath(value).is_absolute()
                or PureWindowsPath(value).is_absolute())


def _same_path(a: str, b: str) -> bool:
    return a.rstrip("/\\") == b.rstrip("/\\")


def pattern_regex(pattern: str, modality: str) -> str:
    """A chorus-batch path pattern (Rust regex) for a chorus-upload `parse` pattern: its literal text
    case-insensitively, {patient_id} as the person_id group, {version} and other fields as one folder
    name, and a final {filepath} as chorus-batch's current layout below the modality's folder.
    A starting point only: chorus-upload's {filepath} is any path, chorus-batch's groups say more."""
    def literal(text: str) -> str:
        text = text.replace("{{", "{").replace("}}", "}")
        escaped = "".join("\\" + ch if ch in _META else ch for ch in text)
        return f"(?i:{escaped})" if re.search(r"[A-Za-z]", text) else escaped

    kinds = {"w": r"\w+", "d": r"\d+"}
    out, pos, person, ends = ["^"], 0, False, False
    for match in _FIELD.finditer(pattern):
        out.append(literal(pattern[pos:match.start()]))
        name, kind = match.group(1), match.group(2) or ""
        part = kinds.get(kind, "[^/]+")
        if name == "patient_id" and not person:
            out.append(f"(?P<person_id>{part})")
            person = True
        elif name == "filepath" and match.end() == len(pattern):
            out.append(_TAILS[modality])
            ends = True
        elif name == "filepath":
            out.append(".+")
        else:
            out.append(f"(?:{part})")
        pos = match.end()
    out.append(literal(pattern[pos:]))
    return "".join(out) + ("" if ends else "$")


# An account's private endpoint name (ACCOUNT.privatelink.blob.core.windows.net, or a national cloud's), as a site
# inside the hospital's network reaches it: its central_path.path was "not an Azure container".
_PRIVATE_ENDPOINT = re.compile(r"(?i)^[a-z0-9]+\.privatelink\.(?:blob|dfs)\.(?:core\.windows\.net|"
                               r"core\.usgovcloudapi\.net|core\.chinacloudapi\.cn)$")


class _Converter:
    def __init__(self, path: Path, data: dict):
        self.path = path
        self.file = str(path)
        self.warnings: list[str] = []
        self.secret_values: list[str] = []  # to check that none reaches the output
        self.unneeded: list[str] = []  # known keys chorus-batch does not need
        self.empty_secrets: list[str] = []
        self.url_sas: list[str] = []  # keys of URLs that carried a SAS token
        # the account endpoint of an https:// central_path.path (https://ACCOUNT.blob.core.windows.net/CONTAINER/...)
        self.central_account: str | None = None
        # Azure secrets warned of as named in chorus.toml's [azure]: dotted key -> (the warning's index, the key,
        # the value masked); azure() records in `named` the keys whose variable it does write (see convert())
        self.azure_secret_at: dict[str, tuple[int, str, str]] = {}
        self.named: dict[str, list[str]] = {}
        self.data = self._sanitize(data, "")

    # -- what the file holds --------------------------------------------------------------------------

    def warn(self, text: str) -> None:
        message = f"{self.file}: {text}"
        if message not in self.warnings:
            self.warnings.append(message)

    def _sanitize(self, table: dict, prefix: str) -> dict:
        """The config with every secret taken out (and warned about): a _Secret in its place, or the URL
        without its user:password and query. A key that names a secret holds one whatever its value's type
        (text, a table, an array, a number)."""
        out = {}
        for key, value in table.items():
            if "=" in key and (_SECRET_TEXT.search(key) or url_secrets(key)[3]):  # (not aws_secret_access_key)
                # A SAS token or an account key pasted as a key ("sv=...&sig=..." = ""): it was named in "not
                # understood" and in the file's comments, whole
                self.secret_values.append(key)
                self.warn(f"{prefix}<a key of {len(key)} characters, not shown> looks like a secret (a SAS token or "
                          "a key written as a key name?): not copied; it was stored in a file: rotate it")
                continue
            out[key] = self._value(f"{prefix}{key}", key, value)
        return out

    def _value(self, dotted: str, key: str | None, value: Any) -> Any:
        if key is not None and _secret_key(key):
            self._secret(dotted, key.lower(), value)
            return _Secret(empty=_empty(value))
        if isinstance(value, dict):
            return self._sanitize(value, dotted + ".")
        if isinstance(value, list):
            return [self._value(f"{dotted}[{i}]", None, item) for i, item in enumerate(value)]
        return self._leaf(dotted, value)

    def _leaf(self, dotted: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        clean, user, password, query = url_secrets(value)
        if (password or query) and not _SECRET_TEXT.search(clean):
            self._url_secret(dotted, clean, user, password, query)
            return clean
        if password or query or _SECRET_TEXT.search(value):
            self._secret(dotted, "text", value)
            return _Secret(empty=False)
        return value

    def _secret(self, dotted: str, name: str, value: Any) -> None:
        if _empty(value):
            self.empty_secrets.append(dotted)
            return
        self.secret_values += [str(leaf) for leaf in _scalars(value) if leaf not in ("", None)
                               and not isinstance(leaf, bool)]
        rotate = "it was stored in a file: rotate it"
        if name in AZURE_SECRETS:
            setting, variable, what = AZURE_SECRETS[name]
            advice = (f"not copied (chorus.toml names the environment variable instead: [azure] {setting} = "
                      f"\"{variable}\"); {rotate}, and export the new {what} as {variable}")
        elif name in AWS_SECRETS:
            advice = (f"not copied (chorus-batch signs in to S3 with the standard AWS chain); {rotate}, and export "
                      f"the new one as {AWS_SECRETS[name]} (or use an AWS profile: [s3] profile)")
        else:
            advice = (f"looks like a secret: not copied (chorus-batch reads secrets only from the environment); if it "
                      f"is one, {rotate}")
        self.warn(f"{dotted} = {_mask(value)}: {advice}")
        if name in AZURE_SECRETS:
            self.azure_secret_at[dotted] = (len(self.warnings) - 1, name, _mask(value))

    def _url_secret(self, dotted: str, clean: str, user: str | None, password: str | None, query: str | None) -> None:
        """A URL that held a password and/or a query (a SAS token): named, masked, and what to do instead."""
        self.secret_values += [secret for secret in (password, query) if secret]
        scheme, rest = clean.split("://", 1)
        userinfo = ((user + ":" if user is not None else "") + "****@") if password else ""
        shown = f"{scheme}://{userinfo}{rest}{'?****' if query else ''}"
        azure = clean.startswith(("https://", "http://", *_AZURE_SCHEMES))
        s3 = clean.startswith(("s3://", "s3a://"))
        found, todo = [], []
        if password:
            found.append(f"a password ({len(password)} characters, not shown)" if user is not None else
                         f"a user name or token before its host ({len(password)} characters, not shown)")
            todo.append("chorus-batch does not sign in with a password in a URL: " + (
                "sign in as [azure] says (az login or a managed identity through DefaultAzureCredential, or the "
                "environment variable [azure] names: AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_KEY)" if azure else
                "sign in with the standard AWS chain ([s3] profile, or the AWS_* variables)" if s3 else
                "sign in through the environment"))
        if query:
            if azure:
                found.append(f"a query, a SAS token ({len(query)} characters, not shown)")
                todo.append("export the new SAS token as AZURE_STORAGE_SAS_TOKEN ([azure] sas_token_env)")
                self.url_sas.append(dotted)
            else:
                found.append(f"a query that may hold a signature ({len(query)} characters, not shown)")
                todo.append("sign in through the environment" + (" ([s3] profile, or the AWS_* variables)" if s3
                                                                  else ""))
        self.warn(f"{dotted} = {_q(shown)}: a URL with {' and '.join(found)}: copied without "
                  f"{'them' if len(found) > 1 else 'it'}; it was stored in a file: rotate it"
                  f"{(' (change the password)' if user is not None else ' (replace the token)') if password else ''}; "
                  f"{'; '.join(todo)}")

    def _unknown(self, table: dict, schema: dict, prefix: str, unknown: list[str]) -> None:
        for key, value in table.items():
            dotted = f"{prefix}{key}"
            known = schema.get(key, schema.get("*", KeyError))
            if known is KeyError:  # (a typo of a key that matters, journaling_mod, left chorus-upload's default)
                meant = get_close_matches(key, [k for k in schema if k != "*"], n=1)
                unknown.append(f"{dotted} (did you mean {prefix}{meant[0]}?)" if meant else dotted)
            elif isinstance(value, _Secret):
                continue  # named by its key as a secret already, whatever it was
            elif isinstance(known, dict):
                if isinstance(value, dict):
                    self._unknown(value, known, dotted + ".", unknown)
                else:
                    self.warn(f"{dotted} should be a table ([{dotted}]), not a value: not converted")
            elif isinstance(value, dict):
                self.warn(f"{dotted} should be a value, not a table: not converted")
            elif _UNNEEDED.match(dotted):
                self.unneeded.append(dotted)

    @staticmethod
    def table(parent: dict, key: str) -> dict:
        value = parent.get(key)
        return value if isinstance(value, dict) else {}

    def text(self, table: dict, key: str, dotted: str) -> str | None:
        """A string setting (None when absent, a secret, or not a string: the last is warned about)."""
        value = table.get(key)
        if value is None or isinstance(value, _Secret):
            return None
        if not isinstance(value, str):
            self.warn(f"{dotted} = {value!r} is not text: not converted")
            return None
        return value

    def flag(self, table: dict, key: str, dotted: str) -> bool | None:
        value = table.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.warn(f"{dotted} = {_q(str(value))} is not true or false: not converted")
        return None

    # -- the conversion ---------------------------------------------------------------------------------

    def convert(self) -> Converted:
        data = self.data
        unknown: list[str] = []
        self._unknown(data, _SCHEMA, "", unknown)
        configuration = self.table(data, "configuration")
        journal = self.table(data, "journal")
        central = self.table(data, "central_path")
        sites = self.table(data, "site_path")
        supported = self.supported(configuration)
        mode, mode_comment = self.mode(journal, configuration)
        root, roots = self.site(sites, supported)
        to, central_comments = self.central(central)
        excludes = self.excludes(supported)
        hints = self.patterns(sites)
        cloud_roots = [value for value in [root, *roots.values()] if value]
        azure = self.azure(central, sites, journal, to, cloud_roots)
        for dotted, (index, name, shown) in self.azure_secret_at.items():
            # A secret where chorus-upload does not read one (another section, another letter case) or that
            # chorus-batch does not sign in with (the journal's, beside the central container's): the warning said
            # chorus.toml names its variable, and chorus.toml did not.
            if dotted not in self.named.get(name, []):
                setting, variable, what = AZURE_SECRETS[name]
                self.warnings[index] = (f"{self.file}: {dotted} = {shown}: not copied, and chorus.toml names no "
                                        f"variable for it (chorus-batch does not sign in with it); it was stored in a "
                                        f"file: rotate it (to sign in with a new {what}: export it as {variable} and "
                                        f"set [azure] {setting} = \"{variable}\" in chorus.toml)")
        s3 = self.s3(sites, cloud_roots)
        if unknown:
            self.warn(f"not understood, not converted: {', '.join(unknown)} (not keys chorus-upload reads; check "
                      "what they were for)")

        lines = self.header(journal)
        lines += ["", "[site]"]
        lines += [f"root = {_q(root)}"] if root else ["# root = \"/data/site\"  # not found in chorus-upload's config"]
        lines += ["# name = \"site-a\"  # optional: recorded with each version"]
        if roots:
            lines += ["", "[site.roots]  # chorus-upload's site_path.<Modality>.path, where not the default path"]
            lines += [f"{modality} = {_q(value)}" for modality, value in roots.items()]
        lines += ["", "[manifest]", f"db = {_q(DEFAULT_DB)}  # relative to this file's folder"]
        lines += ["", "[run]", *mode_comment, *([f"mode = {_q(mode)}"] if mode else []), *excludes]
        lines += ["", "[central]  # the site's central container: `chorus-batch upload`, `verify`", *central_comments]
        if to:
            lines.append(f"to = {_q(to)}")
        lines += azure + s3 + hints
        text = "\n".join(lines) + "\n"
        self.check(text)
        return Converted(text=text, warnings=list(self.warnings))

    def header(self, journal: dict) -> list[str]:
        lines = [f"# chorus.toml converted from the chorus-upload config {_q(self.file)} by `chorus-batch import-config`",
                 "# (every setting: the README's section \"Configuration: chorus.toml\").",
                 "# Secrets are never copied here: [azure] names the environment variables that hold them."]
        unneeded = self.unneeded + [f"{key} (empty)" for key in self.empty_secrets]
        if unneeded:
            lines += ["# " + line for line in textwrap.wrap("Not needed by chorus-batch, not converted: "
                                                             + ", ".join(unneeded) + ".", 114)]
        local = self.text(self.table(journal, "local"), "path", "journal.local.path")
        local = local or self.text(journal, "local_path", "journal.local_path")
        source = self.text(self.table(journal, "source"), "path", "journal.source.path")
        source = source or self.text(journal, "path", "journal.path")
        if not local and source and not _is_url(source):
            local = source
        lines += ["# chorus-upload's journal (its versions, and what it uploaded) is imported on its own:",
                  f"#   chorus-batch import-journal {_q(local) if local else 'JOURNAL'} --db {DEFAULT_DB}"]
        if source and _is_url(source):
            lines.append(f"# (the journal's source is {_q(source)}: import a current local copy of it)")
        return lines

    def supported(self, configuration: dict) -> list[str] | None:
        value = configuration.get("supported_modalities")
        if value is None or isinstance(value, _Secret):
            return None
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",") if name.strip()]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            names = [name.strip() for name in value if name.strip()]
        else:
            self.warn(f"configuration.supported_modalities = {value!r} is not a list of modalities: not converted")
            return None
        others = [name for name in names if name not in MODALITIES]
        if others:
            self.warn(f"configuration.supported_modalities names {', '.join(others)}: chorus-batch knows the "
                      f"modalities {', '.join(MODALITIES)}; files of others are recorded as modality Other")
        return names

    def mode(self, journal: dict, configuration: dict) -> tuple[str | None, list[str]]:
        found = [(f"{name}.journaling_mode", table["journaling_mode"]) for name, table in
                 (("journal", journal), ("configuration", configuration)) if "journaling_mode" in table]
        if not found:
            self.warn("no journaling_mode: chorus-upload's default is \"append\" (files missing from the site are not "
                      "deletions), so [run] mode = \"append\"; set mode = \"full\" if the site holds all of its data "
                      "(chorus-batch records missing files as removed)")
            return "append", ["# journaling_mode was not set: chorus-upload's default, \"append\""]
        if len(found) == 2 and found[0][1] != found[1][1]:
            self.warn(f"journal.journaling_mode and configuration.journaling_mode differ: {found[0][0]} is converted "
                      "(the one current chorus-upload reads)")
        key, value = found[0]
        text = self.text({"v": value}, "v", key)
        mode = {"full": "full", "snapshot": "full", "append": "append"}.get((text or "").strip().lower())
        if mode is None:
            if text is not None:
                self.warn(f"{key} = {_q(text)} is neither \"full\" nor \"append\": [run] mode not set (chorus-batch's "
                          "default: \"full\")")
            return None, []
        return mode, [f"# from {key} = {_q(text or '')}"]

    def site_path(self, table: dict, dotted: str) -> str | None:
        value = self.text(table, "path", f"{dotted}.path")
        if value is None:
            return None
        if not value.strip():
            self.warn(f"{dotted}.path is empty: not converted")
            return None
        if _windows_path(value) and os.name != "nt":
            self.warn(f"{dotted}.path = {_q(value)} is a Windows path: kept as it is, for the Windows machine "
                      "the site runs on; use this chorus.toml there (here, `run` would read it as a folder "
                      "relative to the chorus.toml's own)")
        elif _relative(value):
            self.warn(f"{dotted}.path = {_q(value)} is relative: chorus-upload read it from the folder it ran in, "
                      "chorus.toml reads it from its own folder; make it absolute")
        if value.startswith("gs://"):
            self.warn(f"{dotted}.path = {_q(value)}: Google Cloud Storage is not a root chorus-batch reads "
                      "(az://, abfs://, s3:// or a local folder)")
            return value
        # (a URL `run` refuses as a root — a '.', '..' or '//' folder, a '#', a container in capitals, an https://
        # account URL — was converted without a word, exit 0, and every command then stopped on the chorus.toml)
        from ..urls import check_location
        try:
            check_location(value, f"{dotted}.path")
        except UsageError as refused:
            self.warn(f"{refused.what}: kept as it is, but `run` refuses it as a root; {refused.fix}")
        return value

    def site(self, sites: dict, supported: list[str] | None) -> tuple[str | None, dict[str, str]]:
        default = self.site_path(self.table(sites, "default"), "site_path.default")
        roots: dict[str, str] = {}
        for name, table in sites.items():
            if name == "default" or not isinstance(table, dict):
                continue
            dotted = f"site_path.{name}"
            if name not in MODALITIES:
                meant = next((m for m in MODALITIES if m.lower() == name.lower()), None)
                self.warn(f"[{dotted}]: " + (f"chorus-upload reads [site_path.{meant}] (the case matters), so it used "
                                             "the default path for it; not converted" if meant else
                                             f"chorus-batch knows the modalities {', '.join(MODALITIES)}; this one's "
                                             "root is not converted (under [site] root its files are recorded as "
                                             "modality Other)"))
                continue
            value = self.site_path(table, dotted)
            if value is None or (default is not None and _same_path(value, default)):
                continue
            roots[name] = value
        if default is None:
            # (chorus-upload tracks Metadata whether it is listed or not, as in excludes)
            missing = [m for m in MODALITIES if m not in roots and (supported is None or m in supported
                                                                     or m == "Metadata")]
            if not roots:
                self.warn("no site path (site_path.default.path): [site] root not set; give it in chorus.toml or "
                          "with --site")
            else:  # (every modality rooted elsewhere still needs it: `run` says "no site given" without it)
                self.warn("no site_path.default.path: [site] root not set, which chorus-batch needs whatever "
                          "[site.roots] holds (`run` stops without it)" + (
                              f", and {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no root until it is set"
                              if missing else "")
                          + "; give it in chorus.toml or with --site")
        return default, roots

    def excludes(self, supported: list[str] | None) -> list[str]:
        if supported is None:
            return []
        # chorus-upload adds Metadata whether it is listed or not (config_helper.get_modalities)
        left_out = [m for m in MODALITIES if m != "Metadata" and m not in supported]
        if not left_out:
            return []
        self.warn(f"configuration.supported_modalities leaves out {', '.join(left_out)}: chorus-upload did not track "
                  "those files, chorus-batch tracks every file under the site's root; to leave them out, uncomment "
                  "the [run] exclude it suggests")
        globs = ", ".join(_q(_EXCLUDES[m]) for m in left_out)
        return [f"# chorus-upload tracked only {', '.join(supported)} (supported_modalities);",
                "# chorus-batch tracks every file. To leave the others out:", f"# exclude = [{globs}]"]

    def patterns(self, sites: dict) -> list[str]:
        hints: list[str] = []
        for name in ("default", *MODALITIES):
            if name != "OMOP" and "omop_per_patient" in self.table(sites, name):
                self.unneeded.append(f"site_path.{name}.omop_per_patient")
        for modality in MODALITIES:
            # chorus-upload reads a modality's settings over those of site_path.default
            def where(key: str) -> tuple[dict, str, str]:
                for name in (modality, "default"):
                    if key in self.table(sites, name):
                        return self.table(sites, name), key, f"site_path.{name}.{key}"
                return {}, key, f"site_path.{modality}.{key}"

            pattern = self.text(*where("pattern"))
            per_patient = modality == "OMOP" and self.flag(*where("omop_per_patient"))
            versioned = self.flag(*where("versioned"))
            default = UPSTREAM_PATTERNS[modality]
            effective = pattern or (OMOP_PER_PATIENT if per_patient else default)
            if per_patient:
                self.warn(f"{where('omop_per_patient')[2]} = true: chorus-upload kept OMOP tables in the person "
                          "folders and uploaded them there; chorus-batch expects OMOP/ at the site's root (its "
                          "validation flags other places) and uploads the site's paths as they are")
            if versioned:
                self.warn(f"{where('versioned')[2]} = true: chorus-upload read each version from its own dated "
                          "folder; chorus-batch makes a version of the whole tree on each run, and a dated folder is "
                          "part of every path: check the [patterns] starting point and keep one tree per site")
            if effective.lower() == default.lower():
                continue
            if pattern:
                self.warn(f"{where('pattern')[2]} = {_q(pattern)} is not chorus-upload's default {_q(default)}: "
                          "chorus-batch's patterns are regular expressions over the site-relative path and are not "
                          "translated; a starting point is commented out under [patterns] (check it with "
                          "`chorus-batch status` before a run); chorus-upload uploaded such files in the standard "
                          "layout, chorus-batch uploads the site's paths as they are")
            regex = pattern_regex(effective, modality)
            hints += [f"# chorus-upload's {modality} pattern {_q(effective)}, not translated. A starting point (it",
                      f"# replaces ALL of chorus-batch's {modality} patterns, the older layouts too; check it):",
                      f"# {modality} = [{_literal(regex)}]"]
        return ["", "[patterns]  # chorus-batch's defaults: the README's \"Site layout (default patterns)\"", *hints] \
            if hints else []

    def central(self, central: dict) -> tuple[str | None, list[str]]:
        if self.flag(central, "patient_first", "central_path.patient_first") is False:
            self.warn("central_path.patient_first = false: chorus-upload uploaded modality first (Waveforms/<patient_id>/"
                      "...); chorus-batch uploads the site's paths as they are (<person_id>/Waveforms/...), as the "
                      "CHoRUS upload procedure lays them out")
        path = self.text(central, "path", "central_path.path")
        container = self.text(central, "azure_container", "central_path.azure_container")
        if path is None and container and container.strip():
            path = f"az://{container.strip()}/"
            self.unneeded = [key for key in self.unneeded if key != "central_path.azure_container"]
        if path is None:
            self.warn("no central container (central_path.path): `chorus-batch upload` needs [central] to = "
                      "\"az://<container>/\" or --to")
            return None, ["# to = \"az://<container>/\"  # not found in chorus-upload's config"]
        account = self.account_of(central, path)
        if account:  # https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH: az://CONTAINER/PATH, the endpoint in [azure]
            self.central_account, path = account
        if path.startswith(_AZURE_SCHEMES):
            rest = path.split("://", 1)[1].strip("/")
            name, _, prefix = rest.partition("/")
            name = name.split("@", 1)[0]  # abfs://container@account.dfs.core.windows.net/...
            if not name:
                self.warn(f"central_path.path = {_q(path)} names no container: [central] to not set")
                return None, ["# to = \"az://<container>/\""]
            if container and container.strip() != name:
                self.warn(f"central_path.azure_container = {_q(container)} differs from the container of "
                          f"central_path.path ({_q(name)}): the path's is converted")
            to = f"az://{name}/{prefix.strip('/') + '/' if prefix.strip('/') else ''}"
            # (a prefix every `upload` refuses — a '.' or '..' folder, a '//' inside, a name ending in '.' — was
            # written as [central] to without a word, exit 0: the converted chorus.toml then stopped every upload)
            from ..submit.central import parse_central
            try:
                parse_central(to)
            except UsageError as refused:
                self.warn(f"central_path.path = {_q(path)} is not a central URL chorus-batch can send to "
                          f"({refused.what}): [central] to not set; {refused.fix}")
                return None, [f"# chorus-upload's central_path.path is {_q(path)}, which `upload` refuses as it is:",
                              "# to = \"az://<container>/\""]
            shown = self.text(central, "path", "central_path.path")
            return to, [f"# from central_path.path = {_q(shown or path)}"]
        if path.lower().startswith(("https://", "http://")):
            # A host not known as Azure Storage's, with no azure_account_url naming it: perhaps the account under
            # its own domain. Say what to write if it is (the message said only "not an Azure container").
            from urllib.parse import urlsplit
            parts = urlsplit(path)
            container, _, prefix = parts.path.strip("/").partition("/")
            if container:
                self.warn(f"central_path.path = {_q(path)} is not on a host known as Azure Storage's: [central] to not "
                          "set; if it is the storage account under a custom domain or a private endpoint, set "
                          f"[central] to = \"az://{container}/{prefix + '/' if prefix else ''}\" and [azure] account_url "
                          f"= \"{parts.scheme}://{parts.netloc.rpartition('@')[2]}\"; else pass --to")
                return None, [f"# chorus-upload's central_path.path is {_q(path)}, on a host not known as Azure's:",
                              "# to = \"az://<container>/\""]
        self.warn(f"central_path.path = {_q(path)} is not an Azure container: `chorus-batch upload` sends to one "
                  "(az://<container>/); set [central] to, or pass --to")
        return None, [f"# chorus-upload's central_path.path is {_q(path)}, not an Azure container; `upload` sends",
                      "# to the site's container in the CHoRUS storage account:",
                      "# to = \"az://<container>/\""]

    def account_of(self, central: dict, path: str) -> tuple[str, str] | None:
        """(account URL, az://CONTAINER/PATH) of an http(s):// central_path.path that names a container of an Azure
        storage account: its host is ACCOUNT.blob (or .dfs) .core.windows.net (or a national cloud's), or the host
        of the account URL chorus-upload signed in to (a custom domain); None for any other path. (Its SAS token, user
        or password were taken out and warned of when the config was read.)"""
        from urllib.parse import urlsplit

        from ..urls import _AZURE_HOST

        if not path.lower().startswith(("https://", "http://")):
            return None
        try:
            parts = urlsplit(path)
            host = (parts.hostname or "").lower()
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return None
        found = _AZURE_HOST.match(host)
        if found:
            account = f"{parts.scheme.lower()}://{found.group(1)}.blob.{found.group(2)}{port}"
        elif _PRIVATE_ENDPOINT.match(host):  # the account reached through its private endpoint: kept as reached
            account = f"{parts.scheme.lower()}://{host}{port}"
        else:
            signed_in = [self.text({"v": value}, "v", dotted) for _, dotted, key, value in self.auth_entries(
                central, {}, {}) if key == "azure_account_url"]
            hosts = {urlsplit(url.strip()).hostname for url in signed_in if url and url.strip()}
            if not host or host not in {h.lower() for h in hosts if h}:
                return None
            account = f"{parts.scheme.lower()}://{host}{port}"
        return account, f"az://{parts.path.strip('/')}/"

    def auth_entries(self, central: dict, sites: dict, journal: dict) -> list[tuple[str, str, str, Any]]:
        """(where: central|site|journal, dotted key, key, value) of every sign-in key, in the section or its .auth."""
        places: list[tuple[str, str, dict]] = [("central", "central_path", central)]
        places += [("site", f"site_path.{name}", table) for name, table in sites.items() if isinstance(table, dict)]
        source = self.table(journal, "source")
        places += [("journal", "journal", journal), ("journal", "journal.source", source)]
        entries = []
        for role, dotted, table in places:
            for sub, values in ((dotted, table), (f"{dotted}.auth", self.table(table, "auth"))):
                entries += [(role, f"{sub}.{key}", key, values[key]) for key in _AUTH_KEYS if key in values]
        return entries

    def azure(self, central: dict, sites: dict, journal: dict, to: str | None, roots: list[str]) -> list[str]:
        entries = [e for e in self.auth_entries(central, sites, journal) if e[2].startswith(("azure_", "auth_mode"))]
        used = [e for e in entries if e[0] != "journal"] or entries  # the journal's only when nothing else signs in
        az_roots = [root for root in roots if root.startswith(_AZURE_SCHEMES)]
        if not (to or az_roots or used or self.url_sas):
            return []
        lines = ["", "[azure]  # names of environment variables, never a secret"]

        def first(key: str, check: str, what: str) -> str | None:
            values = [(dotted, self.text({"v": value}, "v", dotted)) for _, dotted, k, value in used if k == key]
            values = [(dotted, value.strip()) for dotted, value in values if value and value.strip()]
            if not values:
                return None
            (dotted, value), *others = values
            differ = [d for d, v in others if v.lower().rstrip("/") != value.lower().rstrip("/")]
            if differ:
                self.warn(f"{', '.join(differ)} name another account than {dotted}: chorus.toml has one [azure] "
                          f"account, {dotted}'s is converted")
            if not re.match(check, value):
                self.warn(f"{dotted} = {_q(value)} is not {what}: not converted")
                lines.append(f"# {dotted} = {_q(value)} is not {what}")
                return None
            lines.append(f"# from {dotted}")
            return value

        url = first("azure_account_url", r"^https?://[^/?#]+(/[^?#]*)?$", "an account URL (https://host[/path])")
        if self.central_account and (url or "").lower().rstrip("/") != self.central_account.lower():
            if url:
                self.warn(f"central_path.path names the account {self.central_account}, not the account URL "
                          f"{url} of its sign-in: the path's is converted")
                lines.pop()
            lines.append("# from central_path.path (the central container's account)")
            url = self.central_account
        if url:
            lines.append(f"account_url = {_q(url.rstrip('/'))}")
        name = first("azure_account_name", r"^[A-Za-z0-9]{1,64}$", "a storage account name (letters and digits)")
        if name:  # Azure's names are lowercase (and case-insensitive in its host names)
            lines.append(f"{'# ' if url else ''}account_name = {_q(name.lower())}"
                         + ("  # account_url is used" if url else ""))
        if not url and not name:
            lines.append("# account_url = \"https://<account>.blob.core.windows.net\"  # or account_name; not found "
                         "in chorus-upload's config (else: AZURE_STORAGE_ACCOUNT)")
        kinds: dict[str, list[str]] = {}
        for _, dotted, key, value in used:
            if key in AZURE_SECRETS and isinstance(value, _Secret) and not value.empty:
                kinds.setdefault(key, []).append(dotted)
            elif key == "auth_mode":
                mode = self.text({"v": value}, "v", dotted)
                if mode in ("login", "sas_token"):
                    kinds.setdefault("login" if mode == "login" else "azure_sas_token", []).append(dotted)
                elif mode is not None:
                    self.warn(f"{dotted} = {_q(mode)} is neither \"login\" nor \"sas_token\": not converted")
        if self.url_sas:
            kinds.setdefault("azure_sas_token", []).extend(self.url_sas)
        self.named = kinds
        for key, (setting, variable, what) in AZURE_SECRETS.items():
            if key not in kinds:
                continue
            stored = [dotted for dotted in kinds[key] if not dotted.endswith(".auth_mode")]
            article = "an" if what[0] in "aeiou" else "a"
            if stored:
                lines += [f"# chorus-upload's config held {article} {what} ({', '.join(stored)}): not copied;",
                          f"# it was stored in a file: rotate it, and export the new one as {variable} before running"]
            else:
                lines.append(f"# chorus-upload signed in with {article} {what} ({', '.join(kinds[key])}): export it as "
                             f"{variable} before running")
            lines.append(f"{setting} = {_q(variable)}")
        if sum(key in kinds for key in AZURE_SECRETS) > 1:
            lines.append("# the first variable set is used: connection string, then SAS token, then account key")
        how = ("none of the variables above is set" if any(key in kinds for key in AZURE_SECRETS)
               else "AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_SAS_TOKEN and AZURE_STORAGE_KEY are not set")
        if "login" in kinds:
            lines.append(f"# {', '.join(kinds['login'])} = \"login\": chorus-batch signs in the same way when {how}:")
        else:
            lines.append(f"# when {how}, chorus-batch signs in with")
        lines.append("# DefaultAzureCredential (az login, managed or workload identity, AZURE_CLIENT_* variables)")
        return lines

    def s3(self, sites: dict, roots: list[str]) -> list[str]:
        entries = [e for e in self.auth_entries({}, sites, {}) if e[2].startswith("aws_")]
        s3_roots = [root for root in roots if root.startswith(("s3://", "s3a://"))]
        if not (entries or s3_roots):
            return []
        lines = ["", "[s3]  # the standard AWS chain signs in: AWS_* variables, a profile, an instance role"]
        profiles = [(dotted, self.text({"v": value}, "v", dotted)) for _, dotted, key, value in entries
                    if key == "aws_profile"]
        profiles = [(dotted, value) for dotted, value in profiles if value]
        if profiles:
            (dotted, profile), *others = profiles
            if any(value != profile for _, value in others):
                self.warn(f"the site's roots name different AWS profiles: chorus.toml has one, {dotted}'s is converted")
            lines += [f"# from {dotted}", f"profile = {_q(profile)}"]
        keys = sorted({dotted for _, dotted, key, value in entries
                       if key in AWS_SECRETS and isinstance(value, _Secret) and not value.empty})
        if keys:
            variables = ", ".join(dict.fromkeys(AWS_SECRETS[k.rsplit(".", 1)[1]] for k in keys))
            lines += [f"# chorus-upload's config held AWS keys ({', '.join(keys)}); not copied: export new ones as",
                      f"# {variables} before running, or name a profile above"]
        return lines

    def check(self, text: str) -> None:
        """The text is a chorus.toml chorus-batch reads, and no secret reached it or a warning."""
        from pydantic import ValidationError

        shown = text + "\n".join(self.warnings)
        if any(len(value) >= 10 and _shown_in(value, shown) for value in self.secret_values):
            raise RuntimeError("import-config would have shown a secret; nothing was written")
        try:
            ConfigFile.model_validate(tomllib.loads(text))
        except (tomllib.TOMLDecodeError, ValidationError) as exc:
            raise RuntimeError(f"import-config wrote a chorus.toml chorus-batch refuses: {exc}") from None


def _shown_in(secret: str, shown: str) -> bool:
    """The secret is in the text as a word of its own. Inside a longer word it is not the secret but a key's name:
    chorus-upload's own template has `aws_access_key_id = "access_key_id"`, which the warning's key name
    (site_path.Images.aws_access_key_id) holds; that was an internal error, exit 3, for a config left as shipped."""
    before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return re.search(before + re.escape(secret) + after, shown) is not None


def _refuse_special(out: Path, where: str) -> None:
    """A UsageError when `out` exists and is not a regular file: a FIFO, a device, a socket or a symbolic
    link is never replaced (a temporary file renamed over it would swap the node itself, e.g. /dev/full, or
    the link, not the file it points to)."""
    import stat

    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"cannot check --out {out}: {exc.strerror or exc}", where=where,
                         fix="check the folder's permissions, or choose another --out") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(out)
        except OSError:
            target = "?"
        what = f"a symbolic link to {target}"
        fix = "pass the file it points to as --out (with --force to replace it), or choose another --out"
    else:
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a file")
        fix = "choose another --out (a regular file; --force replaces only a regular file)"
    raise UsageError(f"--out {out} is not a regular file ({what}); it is not replaced", where=where, fix=fix)


def write_config(text: str, out: str | Path, *, force: bool = False, source: str | Path | None = None) -> Path:
    """Write `text` to `out`, readable by its owner only (0600): it is a settings file, and the place a
    person may later add more to. An existing file is replaced only with `force` (never `source`), and only
    when it is a regular file: a FIFO, a device node, a socket or a symbolic link is refused, with or
    without `force`."""
    out = Path(out)
    where = f"--out {out}"
    if source is not None and out.exists() and out.resolve() == Path(source).resolve():
        raise UsageError(f"--out {out} is the chorus-upload config being converted", where=where,
                         fix="write the chorus.toml to another file, e.g. --out chorus.toml")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder", where=where, fix=f"name the file, e.g. --out {out / 'chorus.toml'}")
    if not out.parent.is_dir():
        why, fix = missing_folder(out)
        raise UsageError(f"cannot write --out {out}: {why}", where=where, fix=f"{fix} for --out")
    _refuse_special(out, where)
    exists = f"{out} exists; it is not overwritten"
    exists_fix = "choose another --out, or pass --force to replace it"
    if (out.exists() or out.is_symlink()) and not force:
        raise UsageError(exists, where=where, fix=exists_fix)
    # The project's owner-only writer: atomic (a killed write leaves the old file or none, never half a
    # config), and it removes the temporary files a killed write left.
    try:
        write_private(out, text.encode("utf-8"), new_only=not force)
    except FileExistsError:
        raise UsageError(exists, where=where, fix=exists_fix) from None
    except WriteError:
        _refuse_special(out, where)  # a node or link put there meanwhile: said as before the write
        raise
    return out
