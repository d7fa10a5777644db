"""What a location string says, without signing in anywhere: its protocol, whether it is an Azure URL,
and the form it may be shown or stored in (secrets masked).

Standard library only: every run asks these questions, and a local run then imports none of the cloud
clients (sources/cloud.py pulls in asyncio and the Azure SDK's helpers: 10-30 ms of each start-up,
`python -X importtime`).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence

from .errors import UsageError

AZURE_PROTOCOLS = ("az", "abfs", "abfss")
S3_PROTOCOLS = ("s3", "s3a")
# What a root may be: a local folder, Azure Blob, S3 (and S3-compatible stores), or fsspec's in-memory file
# system (notebooks, tests). Other fsspec protocols are not tested here, so they are refused up front.
PROTOCOLS = ("file", *AZURE_PROTOCOLS, *S3_PROTOCOLS, "memory")

# Query parameters and userinfo that carry secrets: never recorded, logged or printed. A URL's query is masked
# whole (an Azure SAS, an S3 presigned X-Amz-Signature/-Credential/-Security-Token, whatever a store invents);
# in other text only the SAS parameters that may follow a '?' or '&'.
# A parameter or field is a secret by its name's ending, not by a list of names (a list let through the ones it did not
# know: an SDK's 'AWSAccessKeyId=', 'AccessToken=', 'X-Goog-Credential=', a store's own 'xsig=' or 'copy_source_sig='
# were quoted whole). Azure's SAS carries one secret, `sig` (its sv, se, sp, skoid, skt ... say what it allows and
# until when); S3's presigned URL X-Amz-Signature, X-Amz-Security-Token and X-Amz-Credential (the access key id), and
# in its older form Signature and AWSAccessKeyId; GCS's X-Goog-Signature and -Credential: each ends in one of these.
SECRET_NAME_ENDINGS = ("sig", "signature", "token", "credential", "credentials", "secret", "password", "accesskeyid",
                       "access_key_id", "accesskey", "access_key", "apikey", "api_key", "accountkey", "account_key")
_SECRET_NAME = r"[A-Za-z0-9_.-]*(?:" + "|".join(SECRET_NAME_ENDINGS) + ")"
_SECRET_QUERY = re.compile(r"(?i)([?&](?:sv|se|sp|spr|srt|ss|st|skoid|sktid|skt|ske|sks|skv|" + _SECRET_NAME + ")=)[^&]*")
# each item of a URL's query: a value after its '=' masked, an item without '=' masked whole (a SAS %-escaped as
# one piece, 'sv%3D...%26sig%3D...', has no '=' and was shown in full)
_URL_QUERY_ITEM = re.compile(r"([?&])([^=&#]*)(=[^&#]*)?")
# where a secret's name starts in free text: a word's start, or after a %-escaped '&' or '?' ('%26sig%3D': no word
# boundary between '6' and 's', so an escaped SAS was left as it was; '%3B', an escaped ';' of a connection string)
_NAME_START = r"(?:\b|(?<=%26)|(?<=%3F)|(?<=%3B))"
# A URL's userinfo: user:password@ up to the last '@' (a password may hold '@' or '/', as AWS secret keys do:
# https://user:p@ss@host/ showed 'ss', s3://KEY:a/b@bucket/ all of it), or a user (a token) before the first '/'.
_USERINFO = re.compile(r"^([a-z0-9+.-]+://)([^/?#@:\s]+:\S*|[^/?#\s]*)@", re.IGNORECASE)
# A URL in free text (a message, a log line, an argument), to the next space or quote.
_TEXT_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
# Secrets in free text outside a URL (an SDK's message, a connection string, a header); a value a URL's mask made
# *** already is left as it is (with the colon or bracket after it: "?sig=***: not found" lost its colon)
_SCRUB = [
    # SAS query parameters (sig is the secret; the rest say what it allows and until when), wherever the name starts
    # (after '...', '(', '[', '\u0026' or a %-escape: "...sig=XYZ&foo" was left whole), '=' plain or %-escaped
    (re.compile(r"(?i)(?:(?<![A-Za-z0-9])|(?<=%26)|(?<=%3F)|(?<=%3B))(sig(?:=|%3D|[\"']?\s*:\s*[\"']?))(?!\*\*\*)[^&\s\"';,)\]}<>]+"), r"\1***"),
    # any other name ending as a secret's does (SECRET_NAME_ENDINGS) as a query parameter or form field, '=' plain or
    # %-escaped, or as a quoted JSON or dict key ('"xsig": "..."')
    # (a name, then its ending checked: the endings as a regex alternation, tried at each letter, made scrub 40% slower)
    (re.compile(r"(?i)(?:(?<![A-Za-z0-9_.-])|(?<=%26)|(?<=%3F)|(?<=%3B))([A-Za-z0-9_.-]+"
                r"(?:=|%3D|[\"']\s*:\s*b?[\"']))(?!\*\*\*)[^&\s\"';,)\]}<>]+"), lambda found: _secret_field(found)),
    # connection-string fields, '=' and ';' plain or %-escaped (a connection string URL-encoded in a message)
    (re.compile(r"(?i)" + _NAME_START + r"((?:AccountKey|SharedAccessSignature)(?:=|%3D))(?!\*\*\*)"
                r"(?:(?!%3B)[^;\s\"',<>])+"), r"\1***"),
    # header and key=value forms: Authorization: Bearer / SharedKey, tokens, passwords, AWS keys, and the same names
    # as JSON or a Python dict shows them ('"sig": "XYZ"', "'account_key': 'XYZ'", in an SDK's exception message; a
# header's bytes as botocore logs them: "'X-Amz-Security-Token': b'...'")
    (re.compile(r"(?i)\b(Bearer|SharedKey|SharedKeyLite)\s+[A-Za-z0-9._~+/=:-]+"), r"\1 ***"),
    (re.compile(r"(?i)" + _NAME_START +
                r"((?:x-amz-security-token|x-amz-credential|aws_secret_access_key|aws_session_token|"
                r"secret_access_key|session_token|client_secret|access_token|refresh_token|password|secret|"
                r"X-Amz-Signature|Signature|AccountKey|account_key|sas_token|sastoken|credential|"
                r"connection_string)[\"']?\s*(?:[:=]|%3D)\s*(?:b?[\"'])?)(?!\*\*\*)[^\s\"'&;,<>]+"), r"\1***"),
    # the Azure CLI's and other tools' options, the value after a space (an error quoting its command line)
    (re.compile(r"(?i)(--(?:account-key|sas-token|connection-string|client-secret|password)(?:\s+|=)[\"']?)"
                r"(?!\*\*\*)[^\s\"']+"), r"\1***"),
    # the same in XML (an S3 or Azure error body: <SignatureProvided>, <AccountKey>) and in Azure's "MAC signature
    # found in the HTTP request 'XYZ='" (a Shared Key signature, valid for its request)
    (re.compile(r"(?i)(<(SignatureProvided|Signature|sig|AccountKey|SecretAccessKey|SessionToken)>)[^<]+(</\2>)"),
     r"\1***\3"),
    (re.compile(r"(?i)(MAC signature found in the HTTP request ')[^']+'"), r"\1***'"),
    # an Azure account key alone (64 bytes in base64: 86 characters and '=='), as "$AZURE_STORAGE_KEY" pasted into
    # the wrong option: without its name it was quoted back whole, and recorded in `runs`
    (re.compile(r"(?<![A-Za-z0-9+])[A-Za-z0-9+/]{86}==(?![A-Za-z0-9+/=])"), "***"),
]
# The secrets this tool reads from the environment: their values, wherever they turn up in text (an AWS secret key has
# no shape of its own to be known by), as given and %-escaped (an SDK quotes a URL's query, a form's body). Values
# shorter than this are left: a test's "testing" is no secret, and masking a short word would mangle the paths and
# messages it is part of. A connection string's key and SAS are its secrets (the rest, its account and endpoints,
# are no secret, and appear alone in every message about the account).
SECRET_VARIABLES = ("AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET",
                    "AZURE_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_CONNECTION_STRING")
_SECRET_VALUE_MIN = 16
# variables a chorus.toml names for its secrets ([azure] connection_string_env, sas_token_env, account_key_env):
# masked as those above once the config is read (secret_variable)
_NAMED_SECRET_VARIABLES: set[str] = set()


_QUOTED_KEY = re.compile(r"[\"']\s*:\s*b?[\"']$")


def _secret_field(found: re.Match) -> str:
    """`name=value` (or a quoted key's value) with the value masked if the name ends as a secret's does."""
    head = found.group(1)
    name = _QUOTED_KEY.sub("", head).removesuffix("=")
    name = name[:-3] if name[-3:].upper() == "%3D" else name
    return head + "***" if name.lower().endswith(SECRET_NAME_ENDINGS) else found.group(0)


def secret_variable(name: str) -> None:
    """Mask the value of the environment variable `name` wherever scrub sees it, as the SECRET_VARIABLES' values."""
    _NAMED_SECRET_VARIABLES.add(name)


def secret_values() -> list[str]:
    """The secrets of the environment as they may appear in text, longest first: each secret variable's value, the
    key and SAS of a connection string, a SAS token without its '?', and their %-escaped forms."""
    from urllib.parse import quote

    found: set[str] = set()
    for name in (*SECRET_VARIABLES, *sorted(_NAMED_SECRET_VARIABLES)):
        value = os.environ.get(name, "").strip()
        parts = [value, value.lstrip("?")]
        parts += [field.split("=", 1)[1] for field in value.split(";")
                  if field.split("=", 1)[0].strip().lower() in ("accountkey", "sharedaccesssignature") and "=" in field]
        parts += [item.split("=", 1)[1] for part in list(parts) for item in part.lstrip("?").split("&")
                  if item.split("=", 1)[0].lower() == "sig" and "=" in item]
        for part in parts:
            found.update((part, quote(part, safe=""), quote(part), part.replace("/", "\\/")))
    return sorted((v for v in found if len(v) >= _SECRET_VALUE_MIN), key=len, reverse=True)


def _userinfo(found: re.Match) -> str:
    # abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/ names a container there, not a user: kept
    plain = protocol_of(found.group(0)) in AZURE_PROTOCOLS and ":" not in found.group(2)
    return found.group(0) if plain else found.group(1) + "***@"


def mask_url(url: str) -> str:
    """A URL as it may be shown or stored: every query value and user:password masked."""
    url = _USERINFO.sub(_userinfo, url)
    head, query = url.split("?", 1) if "://" in url and "?" in url else (url, None)
    if query is None:
        return _SECRET_QUERY.sub(r"\1***", url)
    return head + _URL_QUERY_ITEM.sub(_masked_query_item, "?" + query)


def _masked_query_item(found: re.Match) -> str:
    separator, name, value = found.groups()
    if value is not None:
        return f"{separator}{name}=***"
    return f"{separator}***" if name else separator


def _any_case(word: str) -> str:
    """`word` as a POSIX bracket pattern of either case of each letter (sed -E has no case-blind flag on every system)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)  # (names hold '-' and '_' only)


def _names(*names: str) -> str:
    return "(" + "|".join(_any_case(name) for name in names) + ")"


# What a shell script this tool writes (upload --script) masks in what the tools it runs say (the Azure CLI's and
# AzCopy's errors quote a request's URL, its SAS, a connection string): the _SCRUB rules above, as sed -E (POSIX ERE,
# GNU and BSD sed alike) expressions, '#' their delimiter. The script masks the values of its secret variables itself (shell_mask).
# Kept in step with _SCRUB: test_upload checks both on one list of texts.
# (a name starts a word, or follows a %-escaped '&', '?' or ';': _NAME_START)
_ESCAPED_NOT_SEMICOLON = "%([0-24-9A-Fa-f][0-9A-Fa-f]|3[0-9ACDEFacdef])"
SED_SCRUB = tuple(expression.replace('\\"', '"') for expression in (  # (in a bracket, '\\' is itself)
    rf"s#(^|[^A-Za-z0-9]|%26|%3[FfBb])({_any_case('sig')}(=|%3[Dd]|[\"']?[[:space:]]*:[[:space:]]*[\"']?))[^]&[:space:]\"';,)}}<>]+#\1\2***#g",
    r"s#(^|[^A-Za-z0-9_.-]|%26|%3[FfBb])([A-Za-z0-9_.-]*" + _names(*SECRET_NAME_ENDINGS)
    + r"(=|%3[Dd]|[\"'][[:space:]]*:[[:space:]]*b?[\"']))[^]&[:space:]\"';,)}<>]+#\1\2***#g",
    rf"s#{_names('AccountKey', 'SharedAccessSignature')}(=|%3[Dd])([^;[:space:]\"',<>%]|{_ESCAPED_NOT_SEMICOLON})+"
    r"#\1\2***#g",
    rf"s#{_names('Bearer', 'SharedKey', 'SharedKeyLite')}[[:space:]]+[A-Za-z0-9._~+/=:-]+#\1 ***#g",
    r"s#(^|[^A-Za-z0-9]|%26|%3[FfBb])(" + _names(
        "x-amz-security-token", "x-amz-credential", "aws_secret_access_key", "aws_session_token", "secret_access_key",
        "session_token", "client_secret", "access_token", "refresh_token", "password", "secret", "X-Amz-Signature",
        "Signature", "AccountKey", "account_key", "sas_token", "sastoken", "credential", "connection_string")
    + r"[\"']?[[:space:]]*([:=]|%3[Dd])[[:space:]]*(b?[\"'])?)[^[:space:]\"'&;,<>]+#\1\2***#g",
    r"s#(--" + _names("account-key", "sas-token", "connection-string", "client-secret", "password")
    + r"([[:space:]]+|=)[\"']?)[^[:space:]\"']+#\1***#g",
    r"s#(<" + _names("SignatureProvided", "Signature", "sig", "AccountKey", "SecretAccessKey", "SessionToken")
    + r">)[^<]+#\1***#g",
    r"s#(MAC signature found in the HTTP request ')[^']+'#\1***'#g",
    r"s#(^|[^A-Za-z0-9+])[A-Za-z0-9+/]{86}==#\1***#g",
))


def shell_mask(variables: Sequence[str]) -> list[str]:
    """A bash function `mask`, standard input to standard output with secrets masked as scrub masks them: the values
    of `variables` (as given, a SAS token also without its '?'), then SED_SCRUB."""
    sed = " ".join(f"-e {shlex.quote(expression)}" for expression in SED_SCRUB)
    values = " ".join(f'"${{{name}:-}}"' for name in variables)
    return [
        "mask() {  # standard input to standard output, every secret masked (what the Azure CLI or AzCopy says may "
        "quote one)",
        "  local text value",
        "  text=$(cat)",
        f"  for value in {values}; do",
        "    value=${value#\\?}",
        f"    if [ ${{#value}} -ge {_SECRET_VALUE_MIN} ]; then text=${{text//\"$value\"/***}}; fi",
        "  done",
        f"  printf '%s\\n' \"$text\" | LC_ALL=C sed -E {sed}",
        "}",
    ]


def scrub(text: str) -> str:
    """Free text as it may be shown, logged or kept (an error message, a log line with its traceback, an SDK's
    message): each URL in it as mask_url shows it; SAS signatures, account keys, bearer tokens, passwords and AWS
    secrets outside a URL become ***. Messages quote what they were given (`no version 'az://c/x?sig=...'`,
    argparse's `unrecognized arguments: ...`): a secret given in the wrong place was printed back, and so kept in
    cron mails and job logs."""
    for value in secret_values():
        text = text.replace(value, "***")
    text = _TEXT_URL.sub(_masked_in_text, text)
    for pattern, replacement in _SCRUB:
        text = pattern.sub(replacement, text)
    return text


# What ends a sentence after a URL, not the URL: masked as part of its last query value, "cannot read
# az://c/x?sig=...: not found" lost its colon ("?sig=*** not found")
_AFTER_URL = re.compile(r"[:,;.)\]]+$")


def _masked_in_text(found: re.Match) -> str:
    url = found.group(0)
    after = _AFTER_URL.search(url)
    return mask_url(url[:after.start()]) + after.group(0) if after else mask_url(url)


def holds_userinfo(url: str) -> bool:
    """A user or a user:password before the URL's host (abfs://CONTAINER@ACCOUNT... names a container: not one)."""
    head = url.split("?", 1)[0]
    return mask_url(head) != head


def redact(argv: list[str]) -> list[str]:
    """Arguments as recorded (`runs`, a shard's scan.json): URLs with their secrets masked (also one inside an
    argument, --site=https://user:pw@host), anything else that looks like a secret masked whole. Here, not in
    pipeline: a shard records its arguments before polars loads."""
    secret = re.compile(r"(AccountKey=|SharedAccessSignature=|password|token|secret)", re.IGNORECASE)
    # An argument that is not UTF-8 (a path's bytes in Latin-1, decoded by Python with surrogates) is kept with its
    # odd bytes as \x.. escapes: recorded as it was, it could not be stored as text ('internal error').
    return ["***" if secret.search(a) else scrub(mask_url(storable(a))) for a in argv]


def storable(text: str) -> str:
    """`text` as UTF-8 can hold it: bytes Python decoded with surrogates (a name that is not UTF-8) as \\x..
    escapes, any other lone surrogate as \\udxxx; text that is UTF-8 as it is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_remote(db: str | os.PathLike[str] | None) -> bool:
    """A manifest kept in Azure Blob Storage (store/remote.py), not in a local file."""
    return isinstance(db, str) and protocol_of(db) in AZURE_PROTOCOLS


_FILE_URL = re.compile(r"(?i)^file:(?://([^/]*)(/.*)|(/(?!/).*))$")  # file://HOST/PATH, or file:/PATH


def expand_home(path: str, what: str, fix: str = "give the full path") -> str:
    """`path` with a leading '~' or '~user' read as a shell reads it. Where that home cannot be found (no HOME in
    the environment and no passwd entry: cron or a batch job in a container) it is refused, not left as a folder
    named '~' (Path.expanduser raised RuntimeError there: an "internal error")."""
    if not path.startswith("~"):
        return path
    user = re.split(r"[/\\]", path[1:], maxsplit=1)[0]
    empty_home = not user and os.environ.get("HOME") is not None and not os.environ["HOME"].strip()
    if empty_home:  # HOME set empty is unset (expanduser read it as '/': '~/m.sqlite' was /m.sqlite)
        home = _home_of_this_user(path)
    else:
        home = os.path.expanduser(path)
    if home.startswith("~"):
        why = (f"the user database has no user {user!r}" if user else
               ("HOME is empty in the environment" if empty_home else "there is no HOME in the environment")
               + ", and no home for this user in the user database (as under cron or in a container)")
        raise UsageError(f"{what} {path}: '~' names no folder here: {why}", where=what, fix=fix)
    return home


def _home_of_this_user(path: str) -> str:
    """`path` ('~' or '~/...') under this user's home in the user database (`path` as it is where there is none)."""
    try:
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir.rstrip("/") or "/"
    except (ImportError, KeyError, AttributeError):
        return path
    return home + path[1:] if home != "/" else (path[1:] or "/")


def root_url(url: str) -> str:
    """A cloud root's URL as it is recorded and matched, one root however it is spelt: its scheme lowercased (RFC 3986:
    S3:// is s3://), s3a:// (Hadoop's name for the same S3 store, in configs written for Spark) as s3://, and without
    the separators after its path (az://c/site/ and az://c/site are one folder, az://c/ the container az://c), its
    query as given. Each other spelling was recorded as a second root, which took over every file of the first."""
    head, mark, query = url.partition("?")
    scheme, sep, rest = head.partition("://")
    if not sep:
        return url
    scheme = "s3" if scheme.lower() == "s3a" else scheme.lower()
    return f"{scheme}{sep}{rest.rstrip('/') if rest.strip('/') else rest}{mark}{query}"


def local_path(location: str, what: str = "--site / [site] root", *, windows: bool | None = None) -> str | None:
    """The local path a root names (None: a cloud URL). A plain path as given; a file: URL as RFC 8089 reads it
    (file:///p, file://localhost/p, file:/p, any case), its %-escapes decoded as a URL's are (file:///data/my%20site,
    as Path.as_uri() and file managers write it); '~' and '~user' at the start of a path as a shell reads them. Each place that took a root stripped 'file://' itself: escapes
    were kept (my%20site: "not a readable directory") in some and decoded in others, and file://localhost/p was a
    folder 'localhost/p' under the working directory. A URL whose escapes make it another folder than its letters
    do, where only its letters exist (a folder named p%20q), is refused: either may be meant."""
    if "://" in location and protocol_of(location) != "file":
        return None
    url = _FILE_URL.fullmatch(location)
    if url is None:
        if "://" in location:  # file:// and nothing after it
            raise UsageError(f"{what} {location}: the file URL names no folder", where=what,
                             fix="give the folder's path, e.g. /data/site (or file:///data/site)")
        # '~' as a shell would read it: chorus.toml's root = "~/site" and a quoted --site "~/site" reach here as typed
        home = expand_home(location, what)
        if home != location and not os.path.exists(home) and os.path.exists(location):
            raise UsageError(f"{what} {location}: '~' names {home}, which does not exist, but the folder {location} "
                             "does (under the working directory)", where=what,
                             fix=f"give it as ./{location}, or as its full path")
        return home
    host, raw = url.group(1) or "", url.group(2) or url.group(3)
    if "@" in host:  # a user:password@ is masked, never shown (it was quoted in the message)
        raise UsageError(f"{what} {mask_url(location)}: a file URL with a user or password is not read (credentials "
                         "are not taken from a URL)", where=what,
                         fix="give the folder's path where it is mounted here (e.g. /mnt/share/site)")
    # On Windows, file://server/share/site is the network share \\server\share\site (RFC 8089, and what Windows'
    # Path.as_uri() writes of one): read there as //server/share/site, which Windows opens as that share. Elsewhere
    # a share is reached where it is mounted, not through its host's name.
    unc = host.lower() not in ("", "localhost") and (os.name == "nt" if windows is None else windows)
    if host.lower() not in ("", "localhost") and not unc:
        raise UsageError(f"{what} {location}: a file URL naming the computer {host!r} is not read", where=what,
                         fix="give the folder's path where it is mounted here (e.g. /mnt/share/site)")
    from urllib.parse import unquote

    try:
        path = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {location}: its %-escapes are not UTF-8 text", where=what,
                         fix="give the folder as a plain path, or write its name's bytes as UTF-8 %-escapes") from None
    if unc:
        if not re.fullmatch(r"/[^/\\]+(?:/.*)?", path):  # file://server or file://server/: no share named
            raise UsageError(f"{what} {location}: the file URL names the computer {host!r} but no shared folder on it",
                             where=what, fix=f"give the share and the folder in it, e.g. file://{host}/share/site")
        path, raw = f"//{host}{path}", f"//{host}{raw}"
    elif os.path.splitdrive(path[1:])[0][1:2] == ":":  # file:///C:/data/site (Windows' Path.as_uri()): C:/data/site,
        path, raw = path[1:], raw[1:]  # not /C:/data/site (read on Windows as C:\C:\data\site)
    if path != raw and not os.path.exists(path) and os.path.exists(raw):
        raise UsageError(f"{what} {location}: as a URL it names {path} (its %-escapes decoded), which does not exist, "
                         f"but the folder {raw} does", where=what,
                         fix=f"give the folder as a plain path ({raw}), or write each '%' of its name as %25 in the URL")
    return path


# Azure's rules for a container name, its length included (3-63: a shorter one was first refused by the storage after
# the retries, or not at all where the endpoint could not be reached: exit 3 for a typo), and its two special
# containers; S3's for any bucket, old ones included (S3-compatible stores differ: lengths are left to them).
_AZURE_CONTAINER = re.compile(r"^(?:[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}|\$root|\$web)$")
_S3_BUCKET = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def check_location(location: str, what: str) -> None:
    """Refuse, before anything is opened, a location `what` ("--site", "--db", ...) cannot be: a protocol chorus-batch
    does not read, a URL that names no container or bucket or an invalid one, or credentials in the URL (they would
    be kept with the command in logs and job scripts: they come from the environment)."""
    protocol = protocol_of(location)
    if protocol == "file":
        return
    shown = mask_url(location)
    if protocol in ("http", "https"):
        _refuse_account_url(location, shown, what)
    if protocol not in PROTOCOLS:
        raise UsageError(f"{what} {shown}: chorus-batch does not read {protocol}:// locations", where=what,
                         fix="give a local folder, az://CONTAINER/PATH (Azure Blob; also abfs://, abfss://) or "
                             "s3://BUCKET/PATH (S3 and S3-compatible stores)")
    rest = location.split("://", 1)[1]
    if protocol in AZURE_PROTOCOLS + S3_PROTOCOLS:
        _check_url_parts(location, protocol, rest, shown, what)
    first = rest.split("/", 1)[0]
    if protocol in AZURE_PROTOCOLS:
        container = first.split("@", 1)[0]  # abfs://container@account.dfs.core.windows.net/path
        if not container:
            raise UsageError(f"{what} {shown} names no container", where=what, fix="give az://CONTAINER/PATH")
        if not _AZURE_CONTAINER.fullmatch(container):
            # (the portal and Storage Explorer show names as they are: capitals come from a config or a note typed
            # by hand, and the valid name is plain to say)
            lower = container.lower()
            hint = (f": Azure container names are lowercase, so give {mask_url(location.replace(container, lower, 1))}"
                    if _AZURE_CONTAINER.fullmatch(lower) else "")
            raise UsageError(f"{what} {shown}: {container!r} is not a valid Azure container name", where=what,
                             fix="a container name has 3-63 lowercase letters, digits and single hyphens, and starts "
                                 "and ends with a letter or digit" + hint)
    elif protocol in S3_PROTOCOLS:
        if not first:
            raise UsageError(f"{what} {shown} names no bucket", where=what, fix="give s3://BUCKET/PATH")
        if not _S3_BUCKET.fullmatch(first):
            raise UsageError(f"{what} {shown}: {first!r} is not a valid S3 bucket name", where=what,
                             fix="a bucket name has 3-63 lowercase letters, digits, dots and hyphens")
    if protocol in AZURE_PROTOCOLS + S3_PROTOCOLS:  # (after the container's checks: az:///x names no container)
        _check_path_parts(rest, shown, what)


# What makes a URL's query credentials rather than a '?' in a folder's name: SAS fields, S3 presigned fields,
# anything named like a signature, token, key or credential.
_CREDENTIAL_QUERY = re.compile(r"(?i)(?:^|&)(?:sig|sv|se|sp|spr|srt|ss|st|skoid|sktid|skt|ske|sks|skv|x-amz-[^=&]*|"
                               r"[^=&]*(?:signature|token|key|credential|secret|password)[^=&]*)=")


def _check_url_parts(location: str, protocol: str, rest: str, shown: str, what: str) -> None:
    """A cloud root's URL: no credentials, no query or fragment."""
    head, _, query = rest.partition("?")
    if _CREDENTIAL_QUERY.search(query) or holds_userinfo(location):
        raise UsageError(f"{what} {shown} holds credentials in the URL; they are not used from there", where=what,
                         fix="remove them from the URL and " + (
                             "set AZURE_STORAGE_SAS_TOKEN (or a connection string or an account key), or sign in with "
                             "azure-identity" if protocol in AZURE_PROTOCOLS else
                             "use the standard AWS credential chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a "
                             "profile, a role)") + "; see the README's \"Cloud sites: Azure Blob and S3\"")
    # fsspec and the SDKs cut a URL at '?' and '#' (a query, a fragment): the root read would not be the one named.
    for mark, name in (("?", "a query"), ("#", "a fragment")):
        if mark in rest:
            raise UsageError(f"{what} {shown}: {mark!r} starts {name} in a URL, and a root URL takes none (a folder "
                             f"whose name holds {mark!r} cannot be given as a root)", where=what,
                             fix=f"give the root without {mark!r} (az://CONTAINER/PATH, s3://BUCKET/PATH): a folder "
                                 f"named with {mark!r} can be read from a root above it, or renamed")


def _check_path_parts(rest: str, shown: str, what: str) -> None:
    """No empty, '.' or '..' folder names in a cloud root's path (after its container or bucket)."""
    parts = rest.split("/")[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]  # (one trailing '/' says "a folder")
    odd = next((part for part in parts if part in ("", ".", "..")), None)
    if odd is not None:
        said = "an empty folder name ('//')" if odd == "" else f"a {odd!r} folder"
        raise UsageError(f"{what} {shown} has {said} in its path: storage keeps an empty name as a name of its "
                         "own and resolves '.' and '..' away, so it would not name the folder it seems to", where=what,
                         fix="give the path with one '/' between folder names and no '.' or '..' "
                             "(e.g. az://CONTAINER/site/ or s3://BUCKET/site/)")


_AZURE_HOST = re.compile(r"(?i)^([a-z0-9]+)\.(?:blob|dfs)\.(core\.windows\.net|core\.usgovcloudapi\.net|"
                         r"core\.chinacloudapi\.cn)$")


def _refuse_account_url(location: str, shown: str, what: str) -> None:
    """An https:// account URL (https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH, a SAS after it or not): refused
    with the az:// root and the [azure] setting that say the same, its SAS named for the environment."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(location)
    host = _AZURE_HOST.match(parts.hostname or "") if parts.hostname else None
    secret = " (its query, a SAS token, goes into AZURE_STORAGE_SAS_TOKEN, never into a URL)" if parts.query else ""
    if host:
        container, _, path = parts.path.strip("/").partition("/")
        # An https URL's path is %-escaped (the portal's "Copy URL" gives site%20one for the prefix 'site one'); an
        # az:// root decodes nothing, so the root that names the same blobs has the escapes decoded: the fix gave
        # az://c/site%20one, which was then "not found"
        try:
            path = unquote(path, errors="strict")
        except UnicodeDecodeError:
            pass  # (not UTF-8 escapes: no blob name; given as typed)
        root = f"az://{container or 'CONTAINER'}/{path}"
        if any(c.isspace() for c in root) or any(c in root for c in "'\"$`&;|<>()*[]!"):
            root += " (quoted for the shell)"
        fix = (f"give {root} and set [azure] account_url = \"https://{host.group(1)}.blob.{host.group(2)}\" in "
               f"chorus.toml (or AZURE_STORAGE_ACCOUNT={host.group(1)}){secret}")
    else:
        fix = ("give az://CONTAINER/PATH with the endpoint in [azure] account_url, or s3://BUCKET/PATH with "
               f"[s3] endpoint_url{secret}")
    raise UsageError(f"{what} {shown}: a root is given as az://, abfs:// or s3://, not as an http(s):// URL", where=what,
                     fix=fix)


def check_manifest_location(db: str, what: str = "--db / [manifest] db") -> None:
    """A manifest is a local file or an Azure blob (az://, store/remote.py); any other URL is refused before it could
    be taken for a local path (s3://b/m.sqlite would make a folder named 's3:' here). A local path ending in a
    separator names a folder: `run --db dir/` made a manifest file named `dir` (the '/' is lost once it is a Path)."""
    if "://" not in db:
        refuse_secret_path(db, what)
        if db.endswith(("/", os.sep)) and db.strip("/" + os.sep):
            raise UsageError(f"{what} {db} ends in a path separator, so it names a folder, not a manifest file",
                             where=what, fix=f"give the manifest's file path, e.g. {db}chorus_manifest.sqlite")
        refuse_blank_ends(db, what)
        refuse_windows_path(db, what)
        refuse_too_long(db, what)
        return
    protocol = protocol_of(db)
    if protocol not in AZURE_PROTOCOLS:
        given = "a file:// URL" if protocol == "file" else f"{protocol}://"
        raise UsageError(f"{what} {mask_url(db)}: a manifest is kept in a local file or in Azure Blob (az://), "
                         f"not in {given}", where=what,
                         fix="give a local path (without file://), or az://CONTAINER/path/manifest.sqlite")
    check_location(db, what)


# An environment variable as a shell ($NAME, ${NAME}) or Windows (%NAME%) writes it in a path
# (and as Kubernetes, $(NAME), leaving one it does not define as written)
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?|\$\(([A-Za-z_][A-Za-z0-9_]*)\)|%([A-Za-z_][A-Za-z0-9_]*)%")


def unexpanded_variable(value: str, resolved: str | None = None) -> str | None:
    """The environment variable (`$DATA`, `${DATA}`, `%DATA%`) a path names as text, nothing having filled it in,
    else None. A path that is there up to the name holding it (`resolved`: the path as read, the names after that one
    dropped) is a folder of that very name, taken as written."""
    found = VARIABLE.search(value)
    if found is None:
        return None
    after = re.split(f"[{re.escape(os.sep + (os.altsep or ''))}]", value[found.end():], maxsplit=1)[1:]
    upto = resolved if resolved is not None else os.path.abspath(os.path.expanduser(value))
    for _ in [part for part in after[0].split(os.sep) if part] if after else ():
        upto = os.path.dirname(upto)
    return None if os.path.lexists(upto) else found.group(0)


def refuse_variable(value: str, what: str, resolved: str | None = None) -> None:
    """A UsageError for a path argument that names an environment variable no shell filled in (`--db '$DB'` in
    single quotes, a container's exec-form command, a unit file, a Kubernetes `$(DB)` of a variable not defined):
    `run --db '${DB}.sqlite'` made a new manifest of that name in the working folder and recorded every file as added,
    `--parquet '$SNAPS'` a folder '$SNAPS'; the reading commands said "no manifest at .../$DB/m.sqlite"."""
    variable = unexpanded_variable(value, resolved)
    if variable is None:
        return
    raise UsageError(f"{what} {value}: names the environment variable {variable}, but nothing filled it in (chorus-batch "
                     "expands no environment variables, only a leading ~); nothing was done", where=what,
                     fix="write the path out, or " + (
                         f"run the command where Windows' cmd.exe fills {variable} in" if variable.startswith("%") else
                         "define the variable where it is filled in (a Kubernetes env: entry)" if variable.startswith("$(")
                         else f"let a shell fill it in (\"{variable}\" in double quotes, not single; in a container or "
                              "unit file, run the command through sh -c)"))


# A path as Windows writes it: a drive (C:\\data, C:/data) or a network share (\\\\server\\share)
_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\[^\\/]+[\\/])")


def refuse_windows_path(value: str, what: str, resolved: str | None = None, *, dash: str = "") -> None:
    """A UsageError for a Windows path (`value`, of the setting `what`) given here, where it is no path: a chorus.toml
    copied from the site's Windows machine (`db = 'C:\\chorus\\manifest.sqlite'`), a `--db` pasted from its
    notes. `run` made a new, empty manifest in the working folder (or the config's), a file named
    'C:\\chorus\\manifest.sqlite', and added every file again; the reading commands said "no manifest at
    /home/x/C:\\chorus\\manifest.sqlite". A file or folder of that very name (`resolved`, the path read) is taken.
    `dash` says what '-' is to this setting (see refuse_dash)."""
    refuse_secret_path(value, what, resolved)
    refuse_dash(value, what, resolved, dash=dash)
    refuse_file_url(value, what, resolved)
    refuse_variable(value, what, resolved)
    if os.name == "nt" or os.path.lexists(resolved if resolved is not None else value):
        return
    if not _WINDOWS_PATH.match(value):
        # A relative path with Windows separators (`db = "manifests\\site.sqlite"` in a chorus.toml shared with the
        # site's Windows machine, `--db data\\m.sqlite` from its notes): here '\\' is part of a name, and `run` made a
        # new manifest named 'manifests\\site.sqlite' beside that folder, and recorded every file as added again.
        # Refused where the folder the backslashes name is there (a name with a '\\' of its own is rare, never that).
        if "\\" not in value.rstrip("\\"):
            return
        here = resolved if resolved is not None else os.path.abspath(value)
        meant = here[:len(here) - len(value)] + value.replace("\\", "/") if here.endswith(value) else None
        if meant is None or not os.path.isdir(os.path.dirname(meant.rstrip("/")) or "."):
            return
        raise UsageError(f"{what} {value}: '\\' separates folders on Windows only; on this machine it is part of a "
                         f"name, and {value} would be a new file or folder of that name in {os.path.dirname(here)}; "
                         "nothing was done", where=what,
                         fix=f"give it with '/' ({value.replace(chr(92), '/')}), which every system reads")
    here = resolved if resolved is not None else os.path.abspath(value)
    raise UsageError(f"{what} {value}: a Windows path (a drive or a network share), and this machine is not Windows: "
                     f"here it names {here}, which is not there; nothing was done", where=what,
                     fix="give the path as this machine names it (under the mount point of that disk or share here), "
                         "or run on the Windows machine it is of")


def refuse_secret_path(value: str, what: str, resolved: str | None = None) -> None:
    """A UsageError, the value not shown, for a path (`--out`, `--parquet`, `--staging`, `--db`, `[manifest] db`, ...)
    that holds what looks like a secret: a SAS token, an account key, a connection string, the value of a secret
    variable of the environment, pasted into the wrong option. It was taken as a name: `report --out "$SAS"`,
    `registry --out`, `--parquet` and `--staging` wrote files and folders named by the secret, and printed their
    paths whole ("wrote .../sig=..."); a SAS or key, holding '/', was split into folders, and a message naming the
    last of them ("no manifest lX69...%3D there") showed the part after the '/' unmasked. A file or folder of that
    very name (`resolved`, the path read) is taken. A URL is left to the checks of URLs (refuse_url, check_location),
    which say what it is, masked."""
    masked = scrub(value)
    if masked == value or "://" in value or os.path.lexists(resolved if resolved is not None else value):
        return
    raise UsageError(f"{what} {masked}: looks like a secret (a SAS token, an account key, a connection string, a "
                     "password), not a file or folder name; nothing was written", where=what,
                     fix="give a path here; secrets are read from the environment only (see the README's \"Cloud "
                         "sites: Azure Blob and S3\"): rotate the one given here, as it may be in your shell's history")


def refuse_dash(value: str, what: str, resolved: str | None = None, *, dash: str = "") -> None:
    """A UsageError for '-' given as a path, as other tools take it for standard input or output: `--db -` said "no
    manifest at /home/x/-", `run --parquet -` and `--staging -` made a folder named '-' in the working folder,
    `--config -` was "config file not found". `dash` is "stdout" where '-' is standard output (report's, review's and
    import-config's --out: let through), "stdin" where the setting reads a file that /dev/stdin can be. A file or
    folder of that very name (`resolved`, the path read) is taken."""
    if value.strip() != "-" or dash == "stdout" or os.path.lexists(resolved if resolved is not None else value):
        return
    here = resolved if resolved is not None else os.path.abspath(value)
    said = "standard input" if dash == "stdin" else "standard input or output"
    raise UsageError(f"{what} -: '-' is not {said} here; this takes a path, and '-' would be a file or folder named "
                     f"'-' in {os.path.dirname(here)}; nothing was done", where=what,
                     fix=(f"to read standard input give {what} /dev/stdin; otherwise give the file's path"
                          if dash == "stdin" else "give a file or folder path (./- for one named '-')"))


def refuse_file_url(value: str, what: str, resolved: str | None = None) -> None:
    """A UsageError for a `file:` URL without '//' (`file:/data/m.sqlite`, a site root's form; an SQLite URI,
    `file:m.sqlite`) given where a plain path is taken as written (`--db`, `[manifest] db`, `--parquet`, `--out`, ...):
    `file://` was refused, but `run --db file:m.sqlite` started a new manifest named 'file:m.sqlite' in the working
    folder, and `--db file:/data/m.sqlite` was told to `mkdir -p ./file:/data`. A file or folder of that very name
    (`resolved`, the path read) is taken."""
    if not value[:5].lower() == "file:" or "://" in value or os.path.lexists(resolved if resolved is not None else value):
        return
    from urllib.parse import unquote

    plain = unquote(value[5:].split("?", 1)[0].split("#", 1)[0])
    raise UsageError(f"{what} {mask_url(value)}: a file: URL (or an SQLite URI), and this option takes a plain path; "
                     f"taken as written it names {os.path.abspath(resolved if resolved is not None else value)}, which "
                     "is not there; nothing was done", where=what, fix=f"give the path itself: {plain}")


def refuse_url(value: str, what: str, writes: bool) -> None:
    """A UsageError for a URL (`s3://b/r.html`, `az://c/x`, `https://...`, `file:///p`) given to an option that takes
    a path on this machine (`--out`, `--config`, `--delete-list`, `--from-log`, testdata OUT, import-config CONFIG):
    `registry --out s3://b/reg` wrote its files into a folder 's3:/b/reg' under the working folder and exited 0, and
    `report --out s3://b/r.html` said "its folder s3:/b does not exist: create the folder first". `writes`: the
    option names what the command writes (else what it reads). A file or folder of that very name is taken."""
    if "://" not in value or os.path.lexists(value):
        return
    shown = mask_url(value)
    protocol = protocol_of(value)
    if protocol == "file":
        plain = local_path(value, what)
        fix = f"give the path itself: {plain}"
    elif writes:
        fix = ("give a path on this machine, then copy what was written to the storage with its own tool "
               "(aws s3 cp, azcopy copy)")
    else:
        fix = "copy the file here first with the storage's own tool (aws s3 cp, azcopy copy) and give its local path"
    raise UsageError(f"{what} {shown} is a URL ({protocol}://), where a path on this machine is taken: taken as "
                     f"written it names {os.path.abspath(shown)}; nothing was done", where=what, fix=fix)


def refuse_blank_ends(path: str, what: str, kind: str = "the manifest's file name") -> None:
    """A UsageError for a file or folder name (`kind`, of the argument `what`) that starts or ends with white space and
    is not there (`db = "m.sqlite "`, or `--db "$DB"` read from a file saved with Windows line ends: "m.sqlite\r"):
    `run` started a second, empty manifest beside the site's under that name, unseen (the summary's "committed to
    .../m.sqlite " shows no space), and every file was added again; the reading commands said "no manifest at
    .../m.sqlite". A file or folder of that very name is taken."""
    name = os.path.basename(path.rstrip("/" + os.sep))
    if name == name.strip() or os.path.lexists(os.path.expanduser(path) if path.startswith("~") else path):
        return
    meant = os.path.join(os.path.dirname(path.rstrip("/" + os.sep)), name.strip())
    there = f" ({meant} is there)" if name.strip() and os.path.lexists(meant) else ""
    raise UsageError(f"{what} {path!r}: {kind} {'starts' if name != name.lstrip() else 'ends'} with "
                     f"white space ({'a carriage return, as a file saved with Windows line ends leaves' if chr(13) in name else 'a space or a tab'}), "
                     f"and nothing of that name is there{there}; nothing was done", where=what,
                     fix=f"write the name without it: {meant!r}" + (
                         " (save the file the value was read from with Unix line ends: dos2unix)" if chr(13) in name
                         else ""))


def refuse_too_long(path: str, what: str) -> None:
    """A UsageError for a path the file system refuses as too long (ENAMETOOLONG: a name part past its NAME_MAX,
    255 bytes on most, or the whole past PATH_MAX; a variable pasted in twice, a generated name): `versions --db`,
    `[manifest] db`, `--parquet` and `import-journal` JOURNAL said "internal error: OSError: [Errno 36]", exit 3.
    Asked of the file system itself (lstat), so its own limit decides."""
    import errno

    try:
        os.lstat(os.path.expanduser(path) if path.startswith("~") else path)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            return
        longest = max((len(os.fsencode(part)) for part in path.split(os.sep)), default=0)
        shown = path if len(path) <= 120 else f"{path[:60]}...{path[-40:]} ({len(path)} characters)"
        raise UsageError(f"{what} {shown}: the path is too long for the file system (its longest name part has "
                         f"{longest} bytes, the whole {len(os.fsencode(path))}; most file systems take 255 bytes in a "
                         "part, 4096 in all); nothing was done", where=what,
                         fix="give a shorter path (a variable expanded twice, or a name pasted in twice?)") from None
    except ValueError:  # (a NUL byte: said where the path is used)
        return


def staging_folder(location: str, option: str) -> str:
    """The shards' staging folder (`--staging`, `--merge`): a folder on a file system every node reaches, never a
    URL. The shards write Parquet files and scan.json there, and the merge takes an OS lock in it: an az://, s3:// or
    https:// value was taken as a relative folder 'az:/c/x' under the working directory (the shards "succeeded" into
    a folder the merge never saw). A file: URL names its local folder (local_path)."""
    if "://" in location and protocol_of(location) != "file":
        shown = mask_url(location)
        raise UsageError(f"{option} {shown} is a URL: the shards' staging folder must be a folder on a file system "
                         "every node of the cluster reaches (the shards write their results there and the merge locks "
                         "it), not cloud storage; nothing was done", where=option,
                         fix=f"give {option} a shared folder, e.g. {option} /scratch/$USER/chorus-staging (the manifest "
                             "and the site may still be elsewhere)")
    path = local_path(location, option)
    path = path if path is not None else location
    refuse_blank_ends(path, option, "the staging folder's name")  # (the shards would write where no merge looks)
    return path
