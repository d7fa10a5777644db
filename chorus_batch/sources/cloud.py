"""Cloud roots: sign-in the Azure way and the AWS way, errors that say what to do, bounded retries.

  filesystem_for(url, cloud)   the fsspec file system for a root URL, its path, and `how` it signs in
                               (a description without secrets, named in every error message)
  explain(exc, where, how, action)
                               any storage, network or sign-in exception as a SourceError: what
                               happened, where, and what to do; secrets scrubbed
  retrying(fn)                 fn again after transient failures (connection, timeout, 429, 5xx),
                               with backoff, within a deadline
  scrub(text)                  text without SAS signatures, account keys, tokens or passwords

Azure (az://, abfs://, abfss://) signs in with the first of
  1. a connection string in AZURE_STORAGE_CONNECTION_STRING ([azure] connection_string_env names another)
  2. a SAS token in AZURE_STORAGE_SAS_TOKEN (sas_token_env) for the account
  3. an account key in AZURE_STORAGE_KEY (account_key_env) for the account
  4. azure.identity's DefaultAzureCredential (environment service principal, workload identity,
     managed identity, Azure CLI / PowerShell / azd sign-in) for the account
where the account is [azure] account_url, else https://<[azure] account_name>.blob.core.windows.net,
else AZURE_STORAGE_ACCOUNT (or adlfs's AZURE_STORAGE_ACCOUNT_NAME). adlfs accepts a custom endpoint
only as `account_host` (always https://, no http Azurite) and its SDK clients retry for minutes with
their defaults, so the blob service client is built here (`_ChorusBlobFileSystem.do_connect`) with
any account URL, bounded retries and connection timeouts; adlfs does the rest.

S3 (s3://, s3a://, needs `pip install "chorus-batch[s3]"`) uses botocore's standard chain
(AWS_* variables, [s3] profile or AWS_PROFILE, config and credentials files, SSO, instance or
container roles) with [s3] endpoint_url or AWS_ENDPOINT_URL, and [s3] region.

Time bound: a root whose endpoint is down or unreachable fails within about 30 s (RETRY_DEADLINE_S):
each attempt is at most (SDK_RETRIES + 1) connections of at most CONNECT_TIMEOUT_S (5 s) plus the
SDK's short backoffs (~17 s when every connection times out, ~2 s when each is refused), and
`retrying` starts no new attempt that could end past the deadline. A service that accepts connections and
never answers (a stopped process whose socket the kernel still accepts, a hung proxy) is bounded by the read
timeout, READ_TIMEOUT_S (10 s, CHORUS_BATCH_READ_TIMEOUT_S) a request at most SDK_RETRIES + 1 times: ~32 s a call.
With READ_TIMEOUT_S at 60 a stopped Azurite held a run 3 minutes, and a stopped S3 service (s3fs's own retries
nested around botocore's: a ranged read 3 times around get_object 3 times around 4 requests) up to 36 minutes a
read; s3fs's retries are therefore off (botocore's standard mode retries the same errors, `retrying` the object). DefaultAzureCredential's own
probes come on top when it is the sign-in (IMDS: about 1 s; a developer tool it runs: at most
10 s each). CHORUS_BATCH_RETRY_BASE_S scales every backoff (tests set it tiny) and
CHORUS_BATCH_RETRY_DEADLINE_S sets the deadline.

Private certificate authorities (a corporate proxy, Azurite over https): SSL_CERT_FILE or
REQUESTS_CA_BUNDLE names the CA bundle the Azure clients verify with; AWS_CA_BUNDLE (or ca_bundle in the AWS
profile) botocore's. A certificate refused is said as such (classify: "tls"), with the variable to set.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import ssl
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigError, ExitCode, SourceError, UsageError
from ..urls import AZURE_PROTOCOLS, S3_PROTOCOLS, holds_userinfo, mask_url, protocol_of, scrub

if TYPE_CHECKING:
    from ..config import CloudSettings

T = TypeVar("T")

ENV_RETRY_BASE = "CHORUS_BATCH_RETRY_BASE_S"
ENV_RETRY_DEADLINE = "CHORUS_BATCH_RETRY_DEADLINE_S"
ENV_READ_TIMEOUT = "CHORUS_BATCH_READ_TIMEOUT_S"
RETRY_BASE_S = 0.5  # first backoff of `retrying`; doubled each time
RETRY_ATTEMPTS = 4
RETRY_DEADLINE_S = 30.0
CONNECT_TIMEOUT_S = 5  # per connection attempt of the SDK clients
READ_TIMEOUT_S = 10.0  # for a response, and between two reads of it (large blobs stream for longer, in pieces)
SDK_RETRIES = 2  # retries inside the Azure SDK / botocore / s3fs per call, with short backoffs
DEFAULT_CREDENTIAL = ("DefaultAzureCredential (environment, workload identity, managed identity, Azure CLI, "
                      "Azure PowerShell, Azure Developer CLI)")


def retry_base_s() -> float:
    try:
        return max(0.0, float(os.environ.get(ENV_RETRY_BASE, RETRY_BASE_S)))
    except ValueError:
        return RETRY_BASE_S


def retry_deadline_s() -> float:
    try:
        return max(0.0, float(os.environ.get(ENV_RETRY_DEADLINE, RETRY_DEADLINE_S)))
    except ValueError:
        return RETRY_DEADLINE_S


def read_timeout_s() -> float:
    """Seconds a request waits for the service's answer (and between two reads of it): CHORUS_BATCH_READ_TIMEOUT_S."""
    try:
        value = float(os.environ.get(ENV_READ_TIMEOUT, READ_TIMEOUT_S))
    except ValueError:
        return READ_TIMEOUT_S
    return value if value > 0 else READ_TIMEOUT_S


# ----------------------------------------------------------------------------- secrets
# scrub(text): in urls.py (standard library only), as every message, log line and `runs` row goes through it.

def _env(env: Mapping[str, str], *names: str) -> tuple[str | None, str | None]:
    """The first of the variables that is set (not empty): (value, name)."""
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            return value, name
    return None, None


# ----------------------------------------------------------------------------- Azure sign-in


@dataclass(frozen=True)
class AzureSignIn:
    """How an Azure root is signed in to: resolved from the environment and [azure], without I/O."""

    kind: str  # "connection_string" | "sas" | "account_key" | "default_credential"
    how: str  # for messages: what was used, never the secret itself
    account_url: str | None = None  # the blob endpoint (None: from the connection string)
    account_name: str | None = None
    secret: str | None = field(default=None, repr=False)  # connection string, SAS token or account key
    secret_env: str | None = None  # the variable the secret came from
    sas_permissions: str | None = None  # a SAS's sp= (no secret): a refusal names the permissions it lacks


def _account_name_of(url: str) -> str | None:
    """myacct of https://myacct.blob.core.windows.net, or devstoreaccount1 of http://127.0.0.1:10000/devstoreaccount1."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    if path:
        return path.split("/")[0]
    host = parts.hostname or ""
    return host.split(".")[0] if "." in host and not host.replace(".", "").isdigit() else None


def _connection_fields(conn: str) -> dict[str, str]:
    """A connection string's fields, by lower-cased key (AccountName, BlobEndpoint, EndpointSuffix, ...)."""
    return {key.strip().lower(): value.strip() for key, _, value in (part.partition("=") for part in conn.split(";"))
            if value.strip()}


def _connection_string_account(conn: str) -> str | None:
    fields = _connection_fields(conn)
    if fields.get("accountname"):
        return fields["accountname"]
    return _account_name_of(fields["blobendpoint"]) if fields.get("blobendpoint") else None


def blob_endpoint(sign_in: AzureSignIn) -> str:
    """The Blob service endpoint a sign-in reaches, without secrets: its account_url, else what its connection
    string names (BlobEndpoint; else DefaultEndpointsProtocol, AccountName and EndpointSuffix: sovereign clouds).
    A connection string is a secret, and its BlobEndpoint may carry one (a SAS as its query, `?sv=...&sig=...`, which
    the SDK signs in with; a user:password@): the endpoint is its scheme, host and path alone (the upload script
    wrote the whole value into ACCOUNT_URL, the SAS with it)."""
    if sign_in.account_url or sign_in.kind != "connection_string":
        return sign_in.account_url or f"https://{sign_in.account_name}.blob.core.windows.net"
    fields = _connection_fields(sign_in.secret or "")
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return "http://127.0.0.1:10000/devstoreaccount1"
    if fields.get("blobendpoint"):
        endpoint = re.split(r"[?#]", fields["blobendpoint"], maxsplit=1)[0]
        scheme, sep, rest = endpoint.rpartition("://")
        host, slash, path = rest.partition("/")
        return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}".rstrip("/")
    return (f"{fields.get('defaultendpointsprotocol', 'https')}://{sign_in.account_name}.blob."
            f"{fields.get('endpointsuffix', 'core.windows.net')}")


def azure_sign_in(cloud: CloudSettings, env: Mapping[str, str] | None = None, *, url: str | None = None,
                  what: str = "the URL") -> AzureSignIn:
    """Which sign-in an Azure root uses (see the module's docstring for the order); a ConfigError when
    there is no account to sign in to. `url` (abfs://container@account...): a UsageError when the account it
    names is not the one signed in to."""
    sign_in = _azure_sign_in(cloud, os.environ if env is None else env)
    if url is not None:
        _check_url_account(url, sign_in, what)
    return sign_in


def _check_url_account(url: str, sign_in: AzureSignIn, what: str) -> None:
    """The account in abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/ is not where chorus-batch signs in (that is
    [azure] or the environment): a URL naming another account than the sign-in's was read (or written) in the
    sign-in's account, in the container of that name, and recorded as if it were the URL's. Refused."""
    netloc = urlsplit(url).netloc
    if "@" not in netloc or not sign_in.account_name:
        return
    host = netloc.split("@", 1)[1].split(":")[0]
    if host.replace(".", "").isdigit() or host.lower() == "localhost":  # an address, no account name (an emulator)
        return
    named = host.split(".")[0]
    if named and named.lower() != sign_in.account_name.lower():
        raise UsageError(
            f"{what} {mask_url(url)} names the storage account {named!r}, but chorus-batch signs in to the account "
            f"{sign_in.account_name!r} ({sign_in.how}): it would use the container of that name there",
            where=what, fix=f"sign in to {named!r} ([azure] account_name = \"{named}\", AZURE_STORAGE_ACCOUNT, or its "
                            f"connection string), or name the container without an account: "
                            f"az://{netloc.split('@', 1)[0]}{urlsplit(url).path}")


def _azure_sign_in(cloud: CloudSettings, env: Mapping[str, str]) -> AzureSignIn:
    azure = cloud.azure
    conn, conn_env = _env(env, azure.connection_string_env)
    if conn:
        _check_connection_string(conn, conn_env or azure.connection_string_env)
        account = _connection_string_account(conn)
        _check_configured_account(azure, account, conn_env or azure.connection_string_env)
        # A SharedAccessSignature in it has an expiry too (se=, no secret): named, as for a SAS token from the
        # environment, so that a token gone stale says "expired at", not "sign-in failed ... wrong or old".
        sas_in = _connection_fields(conn).get("sharedaccesssignature")
        expiry = _sas_expiry(sas_in) if sas_in else None
        not_before = _sas_not_before(sas_in) if sas_in else ""
        return AzureSignIn("connection_string", f"connection string from {conn_env}"
                           + (f" (account {account})" if account else "")
                           + (f", its SAS{not_before[1:]}" if not_before else "")
                           + (f", its SAS valid until {expiry}" if expiry else ""),
                           account_name=account, secret=conn, secret_env=conn_env,
                           sas_permissions=_sas_field(sas_in, "sp") if sas_in else None)

    account_env_name = None
    if azure.account_url:
        account_url, account_name = azure.account_url, _account_name_of(azure.account_url)
        where = "[azure] account_url"
    elif azure.account_name:
        account_name = azure.account_name
        account_url, where = f"https://{account_name}.blob.core.windows.net", "[azure] account_name"
    else:
        account_name, account_env_name = _env(env, "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_NAME")
        account_url = f"https://{account_name}.blob.core.windows.net" if account_name else None
        where = account_env_name or ""
    if account_url is None:
        raise ConfigError(
            "no Azure storage account to sign in to",
            where="[azure] in chorus.toml, or the environment",
            fix=f"set {azure.connection_string_env} to a connection string; or name the account with "
                "[azure] account_url = \"https://<account>.blob.core.windows.net\" (or account_name), or "
                f"AZURE_STORAGE_ACCOUNT=<account>, and sign in with {azure.sas_token_env} (a SAS token), "
                f"{azure.account_key_env} (an account key), or DefaultAzureCredential (`az login`, a managed "
                "or workload identity, or AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET)")
    account = f"account {account_name} ({where})" if account_name else f"{account_url} ({where})"

    sas, sas_env = _env(env, azure.sas_token_env)
    if sas:
        _check_sas_token(sas, sas_env or azure.sas_token_env)
        # Its expiry (se=, not a secret) is named in every message: a run may outlive its token.
        expiry = _sas_expiry(sas)
        return AzureSignIn("sas", f"SAS token from {sas_env} for {account}" + _sas_not_before(sas)
                           + (f", valid until {expiry}" if expiry else ""),
                           account_url, account_name, sas.lstrip("?"), sas_env, _sas_field(sas, "sp"))
    key, key_env = _env(env, azure.account_key_env, "AZURE_STORAGE_ACCOUNT_KEY")
    if key:
        if not account_name:
            raise ConfigError(
                f"an account key is set ({key_env}) but the account's name is not known from {account_url}",
                where="[azure] account_url", fix="also set [azure] account_name (or AZURE_STORAGE_ACCOUNT)")
        if not _is_base64(key):  # the SDK would sign every request wrongly, and the service say only "forbidden"
            raise ConfigError(f"{key_env} is not an Azure account key (not base64 text)", where=key_env,
                              fix="copy the storage account's key1 or key2 again (Azure portal: Access keys; or "
                                  "`az storage account keys list`)")
        return AzureSignIn("account_key", f"account key from {key_env} for {account}", account_url, account_name,
                           key, key_env)
    if urlsplit(account_url).scheme.lower() != "https":
        # the SDK sends a token only over https: "internal error: ValueError: Token credential is only supported
        # with HTTPS" when the first client was made (an emulator's http:// endpoint with no key, SAS or string set)
        raise ConfigError(
            f"no key, SAS token or connection string is set for {account}, and DefaultAzureCredential (az login, "
            f"a managed identity) signs in only over https, not to {account_url}",
            where=where or "[azure] account_url",
            fix=f"set {azure.connection_string_env}, {azure.sas_token_env} or {azure.account_key_env} in the "
                "environment, or give the account's https:// address")
    return AzureSignIn("default_credential", f"{DEFAULT_CREDENTIAL} for {account_url}" + (f" ({where})" if where else ""),
                       account_url, account_name)


def _configured_account(azure) -> tuple[str | None, str]:
    """The account [azure] account_url or account_name names, when it can be told from it (a custom domain in
    account_url names none), and the setting that says it."""
    if azure.account_url:
        parts = urlsplit(azure.account_url)
        host = (parts.hostname or "").lower()
        if parts.path.strip("/") or ".blob." in host or ".dfs." in host:
            return _account_name_of(azure.account_url), "[azure] account_url"
        return None, "[azure] account_url"
    return azure.account_name or None, "[azure] account_name"


def _check_configured_account(azure, account: str | None, conn_env: str) -> None:
    """A connection string signs in before [azure] account_url / account_name: one for another account than
    chorus.toml names (a variable left from the central container's upload, another project) was used silently,
    and the run tracked (or the upload wrote) the container of that name in the connection string's account.
    Refused, naming both (no secret: account names only)."""
    named, setting = _configured_account(azure)
    if not named or not account or named.lower() == account.lower():
        return
    raise ConfigError(
        f"{setting} names the storage account {named!r}, but the connection string in {conn_env} is for the "
        f"account {account!r}, and a connection string signs in first: chorus-batch would read and write the "
        f"containers of {account!r}",
        where=f"{setting} and {conn_env}",
        fix=f"to use {named!r}, unset {conn_env} (or set it to the connection string of {named!r}) and sign in as "
            f"[azure] says; to use {account!r}, remove {setting} from chorus.toml or make it name {account!r}")


def _check_connection_string(conn: str, name: str) -> None:
    """A ConfigError (never showing the string: it holds the key) for one the SDK would refuse with a bare
    ValueError, or sign every request with wrongly (an AccountKey that is not base64)."""
    parts = [part for part in conn.strip().split(";") if part.strip()]
    fields = _connection_fields(conn)
    fix = ("copy the storage account's connection string again (Azure portal: Access keys; or `az storage account "
           "show-connection-string`): Key=Value pairs separated by ';', such as DefaultEndpointsProtocol=https;"
           "AccountName=<account>;AccountKey=<key>;EndpointSuffix=core.windows.net")
    if not parts or any("=" not in part or not part.partition("=")[0].strip() for part in parts):
        raise ConfigError(f"{name} is not a connection string (it is not Key=Value pairs separated by ';')",
                          where=name, fix=fix)
    if not (fields.get("accountname") or fields.get("blobendpoint") or fields.get("usedevelopmentstorage")):
        raise ConfigError(f"the connection string in {name} names no account (no AccountName or BlobEndpoint)",
                          where=name, fix=fix)
    # `AccountKey=` with nothing after it (a template whose variable was unset: AccountKey=${KEY}) and no SAS: every
    # request went unsigned, refused as "sign-in failed ... may be wrong or old" (exit 3), of a key never given
    given = {key.strip().lower() for key, _, _ in (part.partition("=") for part in parts)}
    if not (fields.get("accountkey") or fields.get("sharedaccesssignature")) and (
            given & {"accountkey", "sharedaccesssignature"}):
        empty = " and ".join(k for k in ("AccountKey", "SharedAccessSignature") if k.lower() in given)
        raise ConfigError(f"the connection string in {name} has an empty {empty} (an unset variable where the "
                          "string was put together?)", where=name, fix=fix)
    if fields.get("sharedaccesssignature"):  # (a SAS URL, or no sig=, as for AZURE_STORAGE_SAS_TOKEN)
        _check_sas_token(fields["sharedaccesssignature"], f"the SharedAccessSignature of the connection string in {name}")
    if fields.get("accountkey") and not _is_base64(fields["accountkey"]):
        raise ConfigError(f"the AccountKey of the connection string in {name} is not an Azure account key (not base64 "
                          "text)", where=name, fix=fix)


def _check_sas_token(sas: str, name: str) -> None:
    """A ConfigError (the token masked) for a value that is no SAS token: the portal's "Blob SAS URL" pasted whole
    (https://acct.blob.core.windows.net/c?sv=...&sig=...), or something with no signature (sig=). Each was sent as
    given and refused by the service as "sign-in failed ... the SAS token may have expired": neither said what was
    wrong, and a run of the night failed with exit 3 on what is a setting to fix."""
    fix = ("set it to the SAS token alone: the part after '?' of a SAS URL, its fields sv, sp, se and sig joined by "
           "'&', as the Azure portal's \"SAS token\" field or `az storage container generate-sas` gives it")
    if "://" in sas:
        raise ConfigError(f"{name} holds a URL ({mask_url(sas)}), not a SAS token", where=name,
                          fix=fix + "; the account and container are named by [azure] and the az:// root")
    if not _sas_field(sas, "sig"):
        raise ConfigError(f"{name} is not a SAS token: it has no signature (sig=)", where=name, fix=fix)


def _is_base64(text: str) -> bool:
    import base64
    import binascii

    try:
        return bool(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        return False


def _ca_bundle(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    value, _ = _env(env, "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    return value


def _client_options(*, sync: bool = False) -> dict[str, Any]:
    """Bounded retries and timeouts for the Azure SDK's clients (their defaults wait minutes)."""
    if sync:
        from azure.storage.blob import LinearRetry
    else:
        from azure.storage.blob.aio import LinearRetry  # the async policy: adlfs's clients are asynchronous

    base = retry_base_s()
    options: dict[str, Any] = {
        "retry_policy": LinearRetry(backoff=2 * base, retry_total=SDK_RETRIES, random_jitter_range=base),
        "connection_timeout": CONNECT_TIMEOUT_S, "read_timeout": read_timeout_s(),
        # downloads in 8 MiB requests: one for most files, bounded memory per hashing thread for large ones
        "max_single_get_size": 8 << 20, "max_chunk_get_size": 8 << 20,
    }
    # No connection_verify=<CA file> here: the SDK would read the whole file again for every request
    # (measured: 75 ms a request, a no-change run on 10k blobs 8x slower). Both transports honour the
    # environment themselves: requests REQUESTS_CA_BUNDLE, aiohttp SSL_CERT_FILE (read when it is imported).
    return options


def _default_credential(*, sync: bool = False):
    """DefaultAzureCredential, its probes bounded: the async one for adlfs's asynchronous clients, the
    sync one for `sync_blob_service_client`."""
    if sync:
        from azure.identity import DefaultAzureCredential
    else:
        from azure.identity.aio import DefaultAzureCredential

    options: dict[str, Any] = {"process_timeout": 10, "retry_total": SDK_RETRIES,
                               "connection_timeout": CONNECT_TIMEOUT_S, "read_timeout": 30}
    ca = _ca_bundle()
    if ca:
        options["connection_verify"] = ca
    try:
        return DefaultAzureCredential(**options)
    except ValueError as exc:
        # azure-identity takes a variable that is set as configured, empty or not: AZURE_TENANT_ID, AZURE_CLIENT_ID
        # and AZURE_CLIENT_SECRET exported as '' (an env file's template, unset shell variables) was an internal error.
        names = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                 "AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST")
        empty = [name for name in names if name in os.environ and not os.environ[name].strip()]
        said = f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} set but empty" if empty else "AZURE_* variables"
        raise ConfigError(f"the Azure sign-in the environment sets up cannot be used: {said} ({exc})",
                          where="environment: " + (", ".join(empty) or "AZURE_TENANT_ID / AZURE_CLIENT_ID / ..."),
                          fix="unset the variables that are empty (or give them their values); see the README's "
                              "\"Cloud sites: Azure Blob and S3\" for the ways to sign in") from None


def _blob_service_client(sign_in: AzureSignIn, credential: Any):
    from azure.storage.blob.aio import BlobServiceClient

    options = _client_options()
    if sign_in.kind == "connection_string":
        return BlobServiceClient.from_connection_string(sign_in.secret, **options)  # type: ignore[arg-type]
    if sign_in.kind == "sas":
        from azure.core.credentials import AzureSasCredential

        credential = AzureSasCredential(sign_in.secret)  # type: ignore[arg-type]
    elif sign_in.kind == "account_key":
        credential = {"account_name": sign_in.account_name, "account_key": sign_in.secret}
    return BlobServiceClient(sign_in.account_url, credential=credential, **options)  # type: ignore[arg-type]


def endpoint_of(fs: Any) -> str | None:
    """host:port of the service a file system of filesystem_for talks to (for messages), or None."""
    try:
        url = getattr(getattr(fs, "service_client", None), "url", None)  # Azure: the Blob service client's
        if url is None:
            url = getattr(fs, "endpoint_url", None) or (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url")
        return scrub(urlsplit(url).netloc.rpartition("@")[2]) or None if url else None
    except Exception:  # noqa: BLE001 - only names the host in a message
        return None


def sync_blob_service_client(sign_in: AzureSignIn, *, connections: int | None = None):
    """A synchronous BlobServiceClient for `sign_in`, with the same bounded retries and timeouts as the
    file systems' (the remote manifest: leases, one download, one upload). `connections`: the HTTP
    connections kept for threads that share the client (requests keeps 10 by default; more threads than
    that open and drop a connection per request)."""
    from azure.storage.blob import BlobServiceClient

    options = _client_options(sync=True)
    if connections and connections > 10:
        import requests
        from azure.core.pipeline.transport import RequestsTransport

        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=connections, pool_maxsize=connections)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        options["transport"] = RequestsTransport(session=session, session_owner=True,
                                                 connection_timeout=options.pop("connection_timeout"),
                                                 read_timeout=options.pop("read_timeout"))
    if sign_in.kind == "connection_string":
        return BlobServiceClient.from_connection_string(sign_in.secret, **options)  # type: ignore[arg-type]
    credential: Any
    if sign_in.kind == "sas":
        from azure.core.credentials import AzureSasCredential

        credential = AzureSasCredential(sign_in.secret)  # type: ignore[arg-type]
    elif sign_in.kind == "account_key":
        credential = {"account_name": sign_in.account_name, "account_key": sign_in.secret}
    else:
        credential = _default_credential(sync=True)
    return BlobServiceClient(sign_in.account_url, credential=credential, **options)  # type: ignore[arg-type]


_BLOB_FS: type | None = None


def _blob_fs_class() -> type:
    """adlfs's AzureBlobFileSystem with the service client built by `_blob_service_client`."""
    global _BLOB_FS
    if _BLOB_FS is None:
        from adlfs import AzureBlobFileSystem
        from adlfs.spec import AzureBlobFile
        from fsspec.asyn import sync_wrapper

        class ChorusBlobFile(AzureBlobFile):
            async def _async_fetch_range(self, start: int, end: int | None = None, **kwargs):
                """adlfs's ranged read, of the bytes as stored: the SDK decodes a blob with a Content-Encoding (gzip,
                deflate) by default, so that a header read (validation) or an upload's copy got decoded bytes, or a
                range of a gzip stream decoded into garbage, where the listing's size and MD5 are of the stored ones."""
                length = None if end is None else (min(end, self.size) - start)
                try:
                    async with self.container_client:
                        stream = await self.container_client.download_blob(
                            blob=self.blob, offset=start, length=length, version_id=self.version_id,
                            max_concurrency=self.fs.max_concurrency or 1, decompress=False)
                        return await stream.readall()
                except AzureError as exc:
                    # An OSError, as a local file's read fails: a header read (validation) took the SDK's error for
                    # content it could not parse ("not a readable WFDB header: ... BlobArchived ... <Error>..."), a
                    # finding that blamed the file and was cached as its facts, never read again
                    raise read_error(exc, self.path) from None

            _fetch_range = sync_wrapper(_async_fetch_range)

        class ChorusBlobFileSystem(AzureBlobFileSystem):
            # The same protocols as adlfs ("abfs", "az", "abfss"): listed with Content-MD5, paths alike.
            def __init__(self, *, chorus_sign_in: AzureSignIn, **kwargs):
                self.chorus_sign_in = chorus_sign_in
                super().__init__(**kwargs)

            def do_connect(self):
                self.service_client = _blob_service_client(self.chorus_sign_in, self.credential)

            def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
                      cache_type="readahead", metadata=None, version_id=None, **kwargs):
                if mode != "rb" or version_id is not None:
                    return super()._open(path, mode, block_size, autocommit, cache_options or {}, cache_type,
                                         metadata, version_id, **kwargs)
                return ChorusBlobFile(fs=self, path=path, mode=mode, block_size=block_size or self.blocksize,
                                      autocommit=autocommit, cache_options=cache_options or {}, cache_type=cache_type,
                                      metadata=metadata, **kwargs)

            def find(self, path, *args, **kwargs):
                return retrying(lambda: super(ChorusBlobFileSystem, self).find(path, *args, **kwargs))

            async def _chorus_root_state(self, root: str) -> str:
                from .remote import is_folder_blob

                container, prefix, _ = self.split_path(root)
                async with self.service_client.get_container_client(container) as client:
                    try:
                        async for _blob in client.list_blobs(name_starts_with=prefix.rstrip("/") + "/" if prefix else None,
                                                             results_per_page=1):
                            return "ok"
                    except ResourceNotFoundError as exc:
                        if "ContainerNotFound" in str(getattr(exc, "error_code", "")) or "container" in str(exc).lower():
                            return "no_container"
                        raise
                    if prefix:
                        # An empty folder of ADLS Gen2, azcopy or Storage Explorer is one blob named like it (no '/')
                        # with hdi_isfolder=true: a folder that is there, as an empty local folder or S3's `site/`
                        # marker is (it was "not found", exit 3). The blob named exactly `prefix` lists first of
                        # those starting with it: one blob of the listing, with the permission to list alone.
                        async for blob in client.list_blobs(name_starts_with=prefix.rstrip("/"), include=["metadata"],
                                                            results_per_page=1):
                            if blob.name == prefix.rstrip("/") and is_folder_blob(blob.metadata):
                                return "ok"
                            break
                return "empty" if prefix else "ok"

            def root_state(self, root: str) -> str:
                """"ok", "empty" (no blob under the prefix) or "no_container": with the permission to list
                alone (a SAS with r and l may not read the container's properties)."""
                from fsspec.asyn import sync

                return sync(self.loop, self._chorus_root_state, root)

        from azure.core.exceptions import AzureError, ResourceNotFoundError

        _BLOB_FS = ChorusBlobFileSystem
    return _BLOB_FS


def _azure_filesystem(url: str, cloud: CloudSettings) -> tuple[Any, str, str]:
    sign_in = azure_sign_in(cloud, url=url, what="the root")
    kwargs: dict[str, Any] = {"account_name": sign_in.account_name or "devstoreaccount1",
                              "use_listings_cache": False, "skip_instance_cache": True,
                              "assume_container_exists": False}  # a failed look at a container is an error, not "it exists"
    # The adlfs attributes that match the sign-in, so adlfs neither makes a credential of its own nor
    # takes another from its environment variables (AZURE_STORAGE_ACCOUNT_KEY, ...) in its file objects.
    if sign_in.kind == "connection_string":
        kwargs["connection_string"] = sign_in.secret
    elif sign_in.kind == "sas":
        kwargs["sas_token"] = "?" + (sign_in.secret or "")
    elif sign_in.kind == "account_key":
        kwargs["account_key"] = sign_in.secret
    else:
        kwargs["credential"] = _default_credential()
    try:
        fs = _blob_fs_class()(chorus_sign_in=sign_in, **kwargs)
    except storage_errors() as exc:
        raise explain(exc, where=mask_url(url), how=sign_in.how, action="sign in to") from None
    return fs, fs._strip_protocol(url).rstrip("/"), sign_in.how


# ----------------------------------------------------------------------------- S3


def s3_options(cloud: CloudSettings, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """S3FileSystem's arguments for the standard AWS chain with [s3]'s endpoint, profile and region; and `how`."""
    env = os.environ if env is None else env
    s3 = cloud.s3
    endpoint, endpoint_from = (s3.endpoint_url, "[s3] endpoint_url") if s3.endpoint_url else _env(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if endpoint and endpoint_from != "[s3] endpoint_url":
        _check_s3_endpoint(endpoint, endpoint_from)
    options: dict[str, Any] = {
        "use_listings_cache": False, "skip_instance_cache": True,
        # (total_max_attempts: the first request and SDK_RETRIES more; botocore's max_attempts counts the retries alone,
        # 4 requests a call where 3 were meant)
        "config_kwargs": {"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": read_timeout_s(),
                          "retries": {"total_max_attempts": SDK_RETRIES + 1, "mode": "standard"}},
    }
    client: dict[str, Any] = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    if s3.region:
        client["region_name"] = s3.region
    if client:
        options["client_kwargs"] = client
    if s3.profile:
        options["profile"] = s3.profile
    key_id, _ = _env(env, "AWS_ACCESS_KEY_ID")
    if s3.profile:
        source = f"AWS profile {s3.profile} ([s3] profile)"
    elif env.get("AWS_PROFILE"):
        source = f"AWS profile {env['AWS_PROFILE']} (AWS_PROFILE)"
    elif key_id:
        source = "access key from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    else:
        source = "the standard AWS credential chain (config and credentials files, SSO, instance or container role)"
    where = f" at {endpoint} ({endpoint_from})" if endpoint else ""
    region = f", region {s3.region}" if s3.region else ""
    return options, f"{source}{where}{region}"


def _check_s3_endpoint(endpoint: str, variable: str) -> None:
    """The endpoint of the environment, held to [s3] endpoint_url's form (config.S3_ENDPOINT): one without a scheme,
    with a path, a query or a user:password@ was taken as it was, and the run failed at its first request with exit 3
    ("cannot reach …: ValueError: Invalid endpoint", "the bucket does not exist", "the storage endpoint cannot be
    reached" for credentials in it), where the same value in chorus.toml is refused up front."""
    from ..config import S3_ENDPOINT

    if S3_ENDPOINT.fullmatch(endpoint):
        return
    secret = holds_userinfo(endpoint) or "?" in endpoint
    raise ConfigError(
        f"{variable} is not an S3 endpoint: {mask_url(endpoint)!r} is not http(s)://host[:port]"
        + (" (credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile, never in a URL)" if secret else ""),
        where=variable, fix=f"set {variable} to the store's address alone, e.g. https://minio.example.org or "
                            "http://127.0.0.1:9000 (or [s3] endpoint_url in chorus.toml); unset it for AWS itself")


_S3_FS: type | None = None


def _s3_filesystem(url: str, cloud: CloudSettings) -> tuple[Any, str, str]:
    global _S3_FS
    try:
        from s3fs import S3FileSystem
    except ImportError:
        raise ConfigError(f"{url.split('://')[0]}:// roots need s3fs, which is not installed",
                          where=url.split("?")[0], fix='install chorus-batch[s3] (pip install "chorus-batch[s3]")') from None
    if _S3_FS is None:
        from s3fs.core import S3File

        class ChorusS3File(S3File):
            def _fetch_range(self, start, end):
                try:
                    return super()._fetch_range(start, end)
                except OSError as exc:  # s3fs says PermissionError of an archived object: "give read permission"
                    if archived(exc):
                        raise Archived() from None
                    raise

        class ChorusS3FileSystem(S3FileSystem):
            # s3fs's own retries of timeouts and throttling (default 5), none: they are nested (a ranged read retried
            # around get_object, itself retried around botocore's attempts), 3 x 3 x 4 read timeouts of a stopped service
            # before a read failed. botocore's standard mode retries the same errors (SDK_RETRIES), `retrying` the object
            retries = 1

            def find(self, path, *args, **kwargs):
                return retrying(lambda: super(ChorusS3FileSystem, self).find(path, *args, **kwargs))

            def _open(self, path, mode="rb", *args, **kwargs):
                opened = super()._open(path, mode, *args, **kwargs)
                if mode == "rb" and type(opened) is S3File:
                    opened.__class__ = ChorusS3File  # (its reads alone differ: s3fs builds the file as it does)
                    if getattr(opened, "cache", None) is not None:  # (its cache took the bound method at __init__)
                        opened.cache.fetcher = opened._fetch_range
                return opened

        _S3_FS = ChorusS3FileSystem
    options, how = s3_options(cloud)
    try:
        fs = _S3_FS(**options)
    except storage_errors() as exc:
        raise explain(exc, where=mask_url(url), how=how, action="sign in to") from None
    return fs, fs._strip_protocol(url).rstrip("/"), how


# ----------------------------------------------------------------------------- the file system of a URL


def filesystem_for(url: str, cloud: CloudSettings | None = None) -> tuple[Any, str, str]:
    """(fsspec file system, root path in it, how it signs in) for a root URL. Every call makes a new file
    system (no instance or listing cache): each root of a mixed site signs in on its own."""
    from ..config import CloudSettings

    cloud = cloud or CloudSettings()
    protocol = protocol_of(url)
    if protocol in AZURE_PROTOCOLS:
        return _azure_filesystem(url, cloud)
    if protocol in S3_PROTOCOLS:
        return _s3_filesystem(url, cloud)
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/"), f"fsspec {protocol}://"


# ----------------------------------------------------------------------------- errors


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and the SDKs' wrapped errors, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend(e for e in (item.__cause__, item.__context__, getattr(item, "inner_exception", None),
                                getattr(item, "original_error", None)) if isinstance(e, BaseException))
        todo.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def _code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    if code:
        return str(getattr(code, "value", code))
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or "")
    return ""


_AUTH_CODES = {"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation",
               "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
               "AccountIsDisabled", "InvalidClientTokenId", "ExpiredTokenException", "AuthorizationHeaderMalformed"}
_PERMISSION_CODES = {"AuthorizationPermissionMismatch", "AuthorizationFailure", "AuthorizationResourceTypeMismatch",
                     "AuthorizationServiceMismatch", "AuthorizationProtocolMismatch", "AuthorizationSourceIPMismatch",
                     "InsufficientAccountPermissions", "AccessDenied", "AllAccessDisabled", "AccountProblem",
                     "KeyBasedAuthenticationNotPermitted"}
_MISSING_CODES = {"ContainerNotFound", "NoSuchBucket", "ContainerBeingDeleted"}
_ACCOUNT_CODES = {"AccountNotFound", "ResourceNotFound_Account", "InvalidResourceName", "InvalidUri"}
_TRANSIENT_CODES = {"ServerBusy", "OperationTimedOut", "InternalError", "SlowDown", "Throttling",
                    "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed_", "ServiceUnavailable"}


def classify(exc: BaseException) -> str:
    """One of: dns, missing, auth, permission, https, tls, network, busy, unknown_account, other."""
    chain = list(_chain(exc))
    names = {type(e).__name__ for e in chain}
    for e in chain:  # status codes and error codes first: they are the service's own word
        code, status = _code(e), _status(e)
        if status in (401, 403) and re.search(r"(?i)failed to authenticate|signature (?:did not match|fields not well)|"
                                              r"expired|not valid|invalid token", str(e)):
            return "auth"  # Azurite and some S3 stores say AuthorizationFailure / AccessDenied for a bad signature
        if code in _MISSING_CODES:
            return "missing"
        if code in _PERMISSION_CODES:
            return "permission"
        if code in _AUTH_CODES:
            return "auth"
        if code in _ACCOUNT_CODES:
            return "unknown_account"
        if code in _TRANSIENT_CODES or status in (408, 429) or (isinstance(status, int) and status >= 500):
            return "busy"
        if status == 401:
            return "auth"
        if status == 403:
            return "permission"
    if names & {"CredentialUnavailableError", "ClientAuthenticationError", "AuthenticationRequiredError",
                "NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "CredentialRetrievalError",
                "UnauthorizedSSOTokenError", "SSOTokenLoadError", "TokenRetrievalError"}:
        return "auth"
    text = " ".join(str(e) for e in chain)
    if re.search(r"(?i)bearer token authentication is not permitted for non-TLS|token credential is only supported "
                 r"with https", text):
        return "https"
    if any(isinstance(e, socket.gaierror) for e in chain) or re.search(
            r"(?i)name or service not known|nodename nor servname|getaddrinfo failed|temporary failure in name "
            r"resolution|no address associated with hostname|name resolution|could not resolve|failed to resolve",
            text):
        return "dns"
    if any(isinstance(e, PermissionError) for e in chain):
        return "permission"
    # (before "network": botocore's SSLError and aiohttp's certificate errors are connection errors too, and said "check
    # the URL and the credentials", the Azure SDK's "check that it is reachable": neither names the certificate)
    # Only a certificate refused: a TLS connection cut during the handshake (SSLEOFError, a flaky proxy) stays a
    # network failure, retried.
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or "ClientConnectorCertificateError" in names \
            or re.search(r"(?i)certificate verify failed", text):
        return "tls"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ServiceRequestError", "ServiceResponseError", "ServiceRequestTimeoutError",
                "ServiceResponseTimeoutError", "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError",
                "ServerTimeoutError", "ClientOSError", "HTTPClientError", "FSTimeoutError"} or any(
            isinstance(e, ConnectionError | TimeoutError | asyncio.TimeoutError) for e in chain):
        return "network"
    if re.search(r"(?i)connection refused|connect call failed|timed out|network is unreachable|"
                 r"no route to host|connection reset", text):
        return "network"
    if any(isinstance(e, FileNotFoundError) for e in chain) and re.search(r"(?i)bucket|container", text):
        return "missing"
    return "other"


# An object in an archive tier (Azure Archive, or being rehydrated from it; S3 Glacier Flexible Retrieval or Deep
# Archive): listed, its MD5 held, but its bytes cannot be read until it is brought back, which takes hours.
_ARCHIVED_CODES = {"BlobArchived", "BlobBeingRehydrated", "InvalidObjectState"}
ARCHIVED = ("the object is in an archive tier (Azure Archive, S3 Glacier or Deep Archive): its bytes cannot be read "
            "until it is brought back (Azure: set its tier to Hot or Cool; S3: restore it), which takes hours; what was "
            "recorded of it stays; nothing to do if it is meant to stay archived (the next run tries it again)")


class Archived(OSError):
    """A read refused because the object is in an archive tier (ARCHIVED): an OSError as a local file's failed read,
    told apart by `upload`, for which 'nothing to do' is not true (the version waits for its bytes)."""

    def __init__(self) -> None:
        super().__init__(ARCHIVED)


def archived(exc: BaseException) -> bool:
    """The service's word that an object cannot be read because it is archived (_ARCHIVED_CODES)."""
    return any(_code(e) in _ARCHIVED_CODES for e in _chain(exc))


def read_error(exc: BaseException, path: str) -> OSError:
    """A failed read of one object's bytes as the OSError a local file's read gives: gone, archived (ARCHIVED), or
    another failure with the service's reason, secrets scrubbed (a storage error is never the content's fault)."""
    if archived(exc):
        return Archived()
    if any(_code(e) == "BlobNotFound" for e in _chain(exc)):
        return FileNotFoundError(errno.ENOENT, "no such object (deleted or renamed since it was listed)", path)
    return OSError(f"the storage failed to give its bytes ({_reason(exc)})")


def store_gone(exc: BaseException) -> bool:
    """The service's own word that the container or bucket does not exist (ContainerNotFound, NoSuchBucket):
    not one object gone, the whole root."""
    return any(_code(e) in _MISSING_CODES for e in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Worth another try: the connection failed or timed out, or the service was busy (429, 5xx)."""
    return classify(exc) in ("network", "busy")


def _endpoint(exc: BaseException) -> str | None:
    """The host:port a connection failed to, as the exception names it (aiohttp's "connect to host", botocore's
    "endpoint URL", and urllib3's "host='…', port=…", which the sync Azure client of upload, verify and a manifest
    in Azure raises: their hints said "check that the storage endpoint is reachable", naming no host)."""
    for e in _chain(exc):
        match = re.search(r"(?i)(?:connect to host|endpoint URL:?)\s*\"?([^\s\"]+)", str(e))
        if match:
            named = match.group(1).rstrip(".:,")
            # botocore names the request's whole URL ("http://host:9000/bucket?list-type=2&prefix=…"), which the
            # hint gave as the thing to reach, its query masked as if it held secrets: the host and port are that
            try:
                named = urlsplit(named).netloc.rpartition("@")[2] or named if "://" in named else named
            except ValueError:
                pass
            return scrub(named)
        match = re.search(r"host='([^']+)', port=(\d+)", str(e))
        if match:
            return scrub(f"{match.group(1)}:{match.group(2)}")
    return None


def _sas_expiry(sas: str) -> str | None:
    """A SAS token's expiry (its se= field, ISO 8601 UTC) as written, or None."""
    return _sas_field(sas, "se")


def _sas_not_before(sas: str) -> str:
    """", not valid before <st>" for a SAS token whose start (st=, no secret) has not come yet, else "": a token made
    with a local time given as UTC (or on a machine whose clock is ahead) was refused as "sign-in failed" with "may
    have expired (its se= date) or be for another account", of a token that is neither."""
    start = _future(_sas_field(sas, "st"))
    return f", not valid before {start}" if start else ""


def _future(stamp: str | None) -> str | None:
    """`stamp` (ISO 8601, UTC when it names no zone) when it is later than now, else None."""
    from datetime import datetime, timezone

    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return stamp if when > datetime.now(timezone.utc) else None


def _not_yet_valid(how: str) -> str | None:
    """The start named in `how` (", not valid before <st>") when it has still not come."""
    match = re.search(r"not valid before (\S+?),? ", how + " ")
    return _future(match.group(1)) if match else None


def _sas_field(sas: str, name: str) -> str | None:
    """One field of a SAS token (se=, sp=: no secret) as written, or None."""
    from urllib.parse import parse_qs

    values = parse_qs(sas.lstrip("?")).get(name)
    return values[0] if values else None


_SAS_LETTERS = {"r": "read", "a": "add", "c": "create", "w": "write", "l": "list"}


def sas_lacking(permissions: str | None, writes: bool) -> str | None:
    """The permissions a SAS (its sp=) lacks for a command that reads and lists, or also writes: ("add, create and
    write (a, c, w)"), or None when it has them all or is not known."""
    if permissions is None:
        return None
    lacking = [letter for letter in ("racwl" if writes else "rl") if letter not in permissions]
    if not lacking:
        return None
    words = [_SAS_LETTERS[letter] for letter in lacking]
    named = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{named} ({', '.join(lacking)})"


def _expired(how: str) -> str | None:
    """The expiry named in `how` (", valid until <se>") when it has passed."""
    from datetime import datetime, timezone

    match = re.search(r"valid until (\S+)$", how)
    if not match:
        return None
    try:
        when = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    except ValueError:
        return None
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return match.group(1) if when <= datetime.now(timezone.utc) else None


def _sign_in_fix(how: str, *, writes: bool = False) -> str:
    """What to do when sign-in failed; `writes`: for an upload (a new SAS needs racwl, not only rl)."""
    permissions = "read, add, create, write and list (racwl)" if writes else "read (r) and list (l)"
    start = _not_yet_valid(how)
    if start:
        where = "the connection string's SharedAccessSignature" if how.startswith("connection string") else \
            "the SAS token (set it in the variable named above)"
        return (f"{where} is valid only from {start} (its st=), later than this machine's clock: make one whose start "
                "is now or earlier (or has none; a local time given as UTC sets it hours ahead), or check the clock")
    if how.startswith("connection string"):
        expired = _expired(how)
        if expired:
            return (f"the connection string's SharedAccessSignature expired at {expired} (its se=): make a new SAS with "
                    f"{permissions} permissions that outlasts the run, put it in the connection string, and run again")
        return "check the connection string (its AccountName, AccountKey or SharedAccessSignature may be wrong or old)"
    if how.startswith("SAS token"):
        expired = _expired(how)
        if expired:
            return (f"the SAS token expired at {expired} (its se=): make a new one with {permissions} "
                    "permissions that outlasts the run, set it in the variable named above, and run again")
        return ("the SAS token may have expired (its se= date) or be for another account or container: make a new "
                f"one with {permissions} permissions and set it in the variable named above")
    if how.startswith("account key"):
        return "the account key is wrong or was rotated: copy a current key (az storage account keys list) into the variable"
    if how.startswith("DefaultAzureCredential"):
        return ("sign in with `az login` (or azd / PowerShell), run where a managed or workload identity is assigned, "
                "or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET; or use AZURE_STORAGE_SAS_TOKEN / "
                "AZURE_STORAGE_CONNECTION_STRING")
    return ("check the AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, which "
            "expires), the profile ([s3] profile or AWS_PROFILE; `aws sso login` for SSO), or the instance role")


def _reason(exc: BaseException) -> str:
    """A one-line reason from the deepest informative exception, without secrets."""
    for e in _chain(exc):
        code = _code(e)
        message = getattr(e, "message", None) or str(e)
        message = message.strip().splitlines()[0] if message and message.strip() else type(e).__name__
        if code:
            return _tidy(f"{code}: {message}")
    # urllib3's "HTTPConnectionPool(...): Max retries exceeded with url: <the request, its query> (Caused by ...)"
    # (the SDK's own retries turned off, as upload's listing has them): the cause it wraps is the reason; its
    # 300 characters were spent on the request's path and query, cut before the cause was said
    cause = next((e.reason for e in _chain(exc) if isinstance(getattr(e, "reason", None), BaseException)
                  and "Max retries exceeded" in str(e)), None)
    message = str(cause if cause is not None else exc).strip().splitlines()
    return _tidy(f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__)


def _tidy(text: str) -> str:
    text = re.sub(r" ssl:(?:<[^>]*>|default|None|True|False)", "", text)  # aiohttp's repr of its SSL context
    # botocore's 'endpoint URL: "http://host:9000/bucket?list-type=2&prefix=…"': the request's query, masked, read
    # as secrets left out ('list-type=***&prefix=***'); the endpoint is what was not reached
    text = re.sub(r'(?i)(endpoint URL:?\s*)"(https?://[^/"?#]+)[^"]*"', r'\1"\2"', text)
    return scrub(text)[:300]


def explain(exc: BaseException, *, where: str, how: str, action: str, writes: bool | None = None,
            sas_permissions: str | None = None, endpoint: str | None = None) -> SourceError:
    """A SourceError for a failure to `action` ("reach", "list", "read", ...) the root `where` (a masked
    URL), signed in with `how`: what happened, where, and what to do; secrets scrubbed. `writes`: the command
    writes there (an upload; default: when `action` is an upload or a write), for the permissions it names.
    `sas_permissions`: the sign-in's SAS sp=, so that a refusal names the permissions it lacks. `endpoint`: the
    service's host:port, named when the exception does not name it (aiohttp's read timeout names none)."""
    writes = action.startswith(("upload", "write")) if writes is None else writes
    kind = classify(exc)
    aws = how.startswith(("AWS", "access key", "the standard AWS"))
    store = "bucket" if aws else "container"
    tried = f" [signed in with {how}]"
    reason = _reason(exc)
    if kind == "dns":
        host = _endpoint(exc)
        what = (f"cannot {action} {where}: the storage host {host + ' ' if host else ''}does not resolve (unknown account "
                f"or endpoint){tried}")
        fix = ("check the endpoint ([s3] endpoint_url / AWS_ENDPOINT_URL) and region" if aws else
               "check the account name ([azure] account_url or account_name, AZURE_STORAGE_ACCOUNT, or the connection "
               "string's AccountName/BlobEndpoint)") + "; if it is right, check DNS, the proxy or the private endpoint"
    elif kind == "unknown_account":
        what = f"cannot {action} {where}: the storage account is not known to the service ({reason}){tried}"
        fix = "check the account name and endpoint ([azure] account_url / account_name, AZURE_STORAGE_ACCOUNT)"
    elif kind == "missing":
        what = f"cannot {action} {where}: the {store} does not exist{tried}"
        fix = (f"check the {store} name in the URL ({'s3://BUCKET/prefix' if aws else 'az://CONTAINER/prefix'}) "
               f"and that it is in this {'endpoint/region' if aws else 'account'}, or create it")
    elif kind == "auth":
        expired, start = _expired(how), _not_yet_valid(how)
        what = (f"cannot {action} {where}: the SAS token expired at {expired}{tried}" if expired
                else f"cannot {action} {where}: the SAS token is not valid before {start}{tried}" if start
                else f"cannot {action} {where}: sign-in failed ({reason}){tried}")
        fix = _sign_in_fix(how, writes=writes)
    elif kind == "permission" and sas_lacking(sas_permissions, bool(writes)):
        # The SAS itself says what it may do: name what it lacks (not "grant a role" or "run again to resume")
        needed = "read, add, create, write and list (racwl)" if writes else "read (r) and list (l)"
        what = (f"cannot {action} {where}: signed in, but not allowed to {sas_lacking(sas_permissions, bool(writes))}: "
                f"the SAS token allows only '{sas_permissions}' (its sp=), and {'writing there' if writes else 'this'} "
                f"needs {needed} ({reason}){tried}")
        fix = (f"ask for (or make) a SAS token with {needed} permissions on the container, set it in the variable "
               "named above, and run the same command again")
    elif kind == "permission" and writes and action != "list":  # (a listing refused is a list permission missing)
        # (an upload also reads: a blob's properties before it writes over one, or before the manifest's copy)
        allowed = "read or write blobs there" if action.startswith("upload") else "write"
        what = f"cannot {action} {where}: signed in, but not allowed to {allowed} ({reason}){tried}"
        fix = ("grant the signed-in identity the 'Storage Blob Data Contributor' role on the container (role "
               "assignments take a few minutes), or use a SAS token with read, add, create, write and list (racwl) "
               "permissions")
    elif kind == "permission":
        what = f"cannot {action} {where}: signed in, but not allowed to list or read ({reason}){tried}"
        fix = ("allow s3:ListBucket and s3:GetObject on the bucket for these credentials" if aws else
               "grant the signed-in identity the 'Storage Blob Data Reader' role on the container or account (role "
               "assignments take a few minutes), or use a SAS token with read (r) and list (l) permissions")
    elif kind == "https":
        what = f"cannot {action} {where}: token sign-in needs an https endpoint{tried}"
        fix = "use an https:// [azure] account_url, or sign in with a SAS token or connection string instead"
    elif kind == "tls":
        what = f"cannot {action} {where}: the https connection failed: the endpoint's certificate was refused ({reason}){tried}"
        fix = ("if the endpoint's certificate is from a private certificate authority (a proxy that inspects TLS, a "
               "private endpoint, an https emulator), name a CA bundle that holds it: "
               + ("AWS_CA_BUNDLE (or ca_bundle in the AWS profile)" if aws else "SSL_CERT_FILE or REQUESTS_CA_BUNDLE")
               + "; else check that the URL's host is the one the certificate names, and this machine's clock")
    elif kind == "network" and no_answer(exc):
        # (a stopped service whose socket the kernel still accepts, a hung proxy: connected, then nothing)
        endpoint = _endpoint(exc) or endpoint or "the storage endpoint"
        what = (f"cannot {action} {where}: {endpoint} did not answer: no response within {read_timeout_s():g} s "
                f"({ENV_READ_TIMEOUT}) to any request{_waited(exc)} ({reason}){tried}")
        fix = (f"check that the storage service at {endpoint} is up and not overloaded (it accepts connections but does "
               f"not answer), and any proxy between; if it is only slow, set {ENV_READ_TIMEOUT} higher (now "
               f"{read_timeout_s():g} s) or {ENV_RETRY_DEADLINE} (now {retry_deadline_s():g} s)")
    elif kind == "network":
        what = f"cannot {action} {where}: the storage endpoint cannot be reached ({reason}){_waited(exc)}{tried}"
        fix = (f"check that {_endpoint(exc) or endpoint or 'the storage endpoint'} is reachable from this machine (network, firewall, "
               "proxy, VPN / private endpoint) and that the service is up; tried again with backoff for up to "
               f"{retry_deadline_s():.0f} s")
    elif kind == "busy":
        what = f"cannot {action} {where}: the storage service kept failing or throttling ({reason}){tried}"
        fix = "try again later; if it persists, check the service's health and the account's request limits"
    else:
        what = f"cannot {action} {where}: {reason}{tried}"
        fix = ("check the URL and that the credentials for it are in the environment (see the README's \"Cloud sites: "
               "Azure Blob and S3\")")
    # Nothing to sign in with, or a configuration botocore cannot use before any request (a profile that is in no file,
    # a key id without its secret key): a configuration to make, as for Azure (exit 2), not a failed sign-in (3)
    unconfigured = next((e for e in _chain(exc) if type(e).__name__ in _UNCONFIGURED), None)
    if unconfigured is not None:
        what, fix = _unconfigured(unconfigured, f"cannot {action} {where}", tried, fix)
    error = SourceError(scrub(what), where=scrub(where), fix=fix)
    error.kind = kind  # type: ignore[attr-defined]
    if unconfigured:
        error.exit_code = ExitCode.USAGE  # type: ignore[misc]
    return error


_UNCONFIGURED = ("NoCredentialsError", "ProfileNotFound", "PartialCredentialsError")


def _unconfigured(exc: BaseException, cannot: str, tried: str, fix: str) -> tuple[str, str]:
    """(what, fix) for botocore's configuration errors (_UNCONFIGURED), which it raises before any request."""
    kwargs = getattr(exc, "kwargs", None) or {}
    if type(exc).__name__ == "ProfileNotFound":
        profile = kwargs.get("profile") or "?"
        return (f"{cannot}: the AWS profile {profile!r} is in no AWS config or credentials file{tried}",
                f"add the profile {profile!r} to ~/.aws/config or ~/.aws/credentials (AWS_CONFIG_FILE and "
                "AWS_SHARED_CREDENTIALS_FILE name other files), or name a profile that is there in [s3] profile or "
                "AWS_PROFILE (`aws configure list-profiles` lists them); `aws sso login --profile NAME` for SSO")
    if type(exc).__name__ == "PartialCredentialsError":
        missing, provider = kwargs.get("cred_var") or "a part of them", kwargs.get("provider")
        found = "the environment" if provider in (None, "env") else f"botocore's {provider} provider"
        return (f"{cannot}: the AWS credentials are incomplete: {missing} is missing (the others are set, in {found})"
                f"{tried}",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY together (and AWS_SESSION_TOKEN for temporary "
                "credentials), or unset them to sign in with a profile or the instance role")
    return f"{cannot}: no AWS credentials are configured{tried}", fix


def root_exists(fs: Any, root: str) -> bool | str:
    """True when `root` can be listed; False when it is not there, or "no_container" (Azure) when its
    container is missing. Azure is asked with a listing of one blob (the permission a run needs); S3 too, and
    "not_s3: <what came back>" when the endpoint answered, but not as an S3 service (_s3_root_state)."""
    if hasattr(fs, "root_state"):
        state = fs.root_state(root)
        return True if state == "ok" else ("no_container" if state == "no_container" else False)
    if hasattr(fs, "call_s3"):
        return _s3_root_state(fs, root)
    return bool(fs.isdir(root))


def _s3_root_state(fs: Any, root: str) -> bool | str:
    """root_exists of an S3 root, from a listing of one key. s3fs's isdir takes any answer for one: an endpoint that is
    no S3 API (a web server, a proxy, MinIO's console port instead of its API's) answering 404 was "the bucket does
    not exist", and answering 200 with a page was an empty bucket ("site root not found: point --site at …"; with a
    previous version, a root whose files are all gone). S3 says NoSuchBucket of a missing bucket, and its listing
    always holds IsTruncated."""
    bucket, _, prefix = root.strip("/").partition("/")
    try:
        out = fs.call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1, **({"Prefix": prefix + "/"} if prefix else {}))
    except FileNotFoundError as exc:
        codes = {_code(e) for e in _chain(exc)} - {""}
        if codes & _MISSING_CODES:
            return "no_container"
        if codes <= {"404", "NotFound"}:  # an HTTP 404 with no S3 error in it
            return "not_s3: HTTP 404 without an S3 error code"
        raise
    if not isinstance(out, dict) or "IsTruncated" not in out:
        return "not_s3: a response that is not an S3 listing"
    return True if not prefix or out.get("KeyCount") or out.get("Contents") else False


def not_an_s3_service(state: str, *, where: str, how: str) -> SourceError:
    """The SourceError for an endpoint that answered a listing, but not as S3 (_s3_root_state's "not_s3: …")."""
    error = SourceError(
        f"cannot reach {where}: the endpoint does not answer as an S3 service (a listing of the bucket got "
        f"{state.partition(': ')[2]}) [signed in with {how}]", where=where,
        fix="check [s3] endpoint_url / AWS_ENDPOINT_URL: it must be the address of the S3 API itself (MinIO: its API "
            "port, 9000 by default, not the console's 9001; AWS: leave it unset, or https://s3.<region>.amazonaws.com)")
    error.kind = "not_s3"  # type: ignore[attr-defined]
    return error


def missing_root(fs: Any, root: str, *, where: str, how: str, known_top_missing: bool = False,
                 what: str = "--site / [site] root") -> SourceError | ConfigError:
    """The SourceError for a root that is not there: its container or bucket missing, or the prefix in it (a
    ConfigError, exit 2, when the root names a single object: a file, not a folder). `what`:
    where the root was given (a [site.roots] one holds a modality's person folders, not OMOP/)."""
    site = what.startswith("--site")
    subject = "site root" if site else f"root of {what}"
    holds = "OMOP/ and the person folders" if site else "the person folders of that modality"
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    store = "bucket" if any(p in S3_PROTOCOLS for p in protocols) else "container"
    top = root.strip("/").split("/")[0]
    top_missing = known_top_missing or "/" not in root.strip("/")
    if not top_missing and any(p in S3_PROTOCOLS for p in protocols):
        try:
            top_missing = not fs.exists(top)
        except Exception:  # noqa: BLE001 - only refines the message; the root is missing either way
            top_missing = False
    if top_missing and any(p in AZURE_PROTOCOLS + S3_PROTOCOLS for p in protocols):
        error = SourceError(f"{subject} not found: the {store} {top} does not exist [signed in with {how}]",
                            where=where, fix=f"check the {store} name in the URL ({what}), "
                                             f"and that it is in this {'endpoint' if store == 'bucket' else 'account'}"
                                             + (_bucket_name_hint(fs, top, where) if store == "bucket" else ""))
        error.kind = "missing"  # type: ignore[attr-defined]
        return error
    try:  # a root naming one object (a file) is there, just not a folder: say so, not "not found"
        info = fs.info(root) if "/" in root.strip("/") else {}
    except Exception:  # noqa: BLE001 - only refines the message; the root cannot be listed either way
        info = {}
    if info.get("type") == "file":
        # (`site` of s3://b/site uploaded as one file or a zip, nothing under `site/`.) A usage error, exit 2, as a
        # local --site that is a file is (sources.local): the storage answered, the root given is not a folder.
        kind, named = "object" if store == "bucket" else "blob", where.rstrip("/")
        above = named.rpartition("/")[0]
        error = ConfigError(
            f"{subject} is a single {kind}, not a folder: {named} is a file of {int(info.get('size') or 0)} bytes, "
            f"and nothing is under {named}/", where=where,
            fix=f"give {what} the folder that holds {holds} (the folder holding this {kind} is {above}), or, if this "
                f"{kind} is the site uploaded as one file (a zip), put its files under {named}/ (unpacked) and remove it")
        error.kind = "missing_root"  # type: ignore[attr-defined]
        return error
    fix = f"point {what} at the container/prefix that holds {holds}"
    decoded = _decoded_root(fs, root, where)
    if decoded:  # my%20site given, 'my site' there (a URL copied from a console or browser, which escape names)
        fix = (f"in {where.split('://')[0]}:// URLs every character is part of the name, '%' too (nothing is decoded): "
               f"{decoded}, the prefix with its %-escapes decoded, is there; give that (quoted for the shell)")
    else:
        fix += _what_is_there(fs, root, where)
    error = SourceError(f"{subject} not found: {where}", where=where, fix=fix)
    # No object under the prefix: an object store has no empty folder, so this is also a root whose files are all gone
    # (a run whose previous version had files there takes it as a root that lists none: RemoteSource.empty_ok)
    error.kind = "empty_prefix"  # type: ignore[attr-defined]
    return error


# S3's rules for a bucket made today (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
# The URL check (urls.check_location) takes any name a bucket ever had: one made in us-east-1 before March 2018 may
# have capitals and '_', up to 255 characters, and S3-compatible stores differ. So a name that breaks them is said
# only once the bucket is not there: `Site_Data` was "does not exist", nothing on why.
_S3_BUCKET_TODAY = re.compile(r"^(?!xn--|sthree-|amzn-s3-demo-)(?!.*(?:-s3alias|--ol-s3|--x-s3|--table-s3)$)"
                              r"(?!\d+\.\d+\.\d+\.\d+$)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _bucket_name_hint(fs: Any, bucket: str, where: str) -> str:
    """For a bucket not found whose name breaks S3's rules for bucket names: that, and the bucket it may mean (its
    name in lowercase with '_' as '-') when that one is there."""
    if _S3_BUCKET_TODAY.fullmatch(bucket):
        return ""
    hint = (f"; {bucket!r} breaks S3's rules for bucket names (3-63 lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit, no '..', not an IP address; only a bucket made in us-east-1 "
            "before March 2018 may have another name)")
    near = bucket.lower().replace("_", "-")
    if near != bucket and _S3_BUCKET_TODAY.fullmatch(near):
        try:
            there = bool(fs.exists(near))
        except Exception:  # noqa: BLE001 - only refines the message; the bucket is missing either way
            there = False
        head, _, rest = where.partition("://")
        if there and rest.startswith(bucket):
            hint += f": the bucket {near} is there; give {head}://{near}{rest[len(bucket):]}"
    return hint


def _loose(name: str) -> str:
    """A folder name as one types it from a note: letter case, Unicode form and runs of white space not told apart."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFC", name).casefold().split())


def _what_is_there(fs: Any, root: str, where: str, shown: int = 5) -> str:
    """For a prefix not found in a container or bucket that is there: the folder the URL names but for letter case,
    Unicode form or white space (names are matched exactly: az://c/Export for export/ was a bare "not found"), else
    the folders at the deepest level of its path that is there. Empty when that cannot be told (only the message is
    refined: the root is missing either way)."""
    parts = root.strip("/").split("/")
    rest = "/".join(parts[1:])
    url = where.rstrip("/")
    if not rest or not url.endswith(rest):
        return ""
    head = url[:len(url) - len(rest)]  # az://c/ (abfs://c@account.../ as given)
    base, found, differ = parts[0], [], []
    for part in parts[1:]:
        try:
            folders = sorted({str(info["name"]).rstrip("/").rsplit("/", 1)[-1] for info in fs.ls(base, detail=True)
                              if info.get("type") == "directory"})
        except Exception:  # noqa: BLE001 - only refines the message; the root is missing either way
            return ""
        near = [part] if part in folders else [name for name in folders if _loose(name) == _loose(part)]
        if not near:
            said = head + "".join(name + "/" for name in found)
            if not folders:
                return f"; {said} holds no folder"
            listed = ", ".join(repr(name + "/") for name in folders[:shown])
            return f"; {said} holds {listed}" + (f" and {len(folders) - shown} more" if len(folders) > shown else "")
        if near[0] != part:
            # (one in the other Unicode form looks the same printed: 'sité', not 'sité'; shown escaped, as the local
            # root's message shows it: 'site\\u0301')
            differ.append(f"{ascii(near[0])}, not {ascii(part)}, the same letters in another Unicode form (an accented "
                          "letter as one character or as a letter and a combining mark)" if _nfc(near[0]) == _nfc(part)
                          else f"{near[0]!r}, not {part!r}")
        found.append(near[0])
        base += "/" + near[0]
    if not differ:
        return ""
    fixed = head + "/".join(found)
    typed = (f" (in bash: $'{_bash_escaped(fixed)}', which writes it in that form)" if "Unicode form (" in differ[-1]
             or any("Unicode form (" in said for said in differ) else " (quoted for the shell)" if " " in fixed else "")
    return (f"; the folder{'s are' if len(differ) > 1 else ' is'} {'; '.join(differ)} (a name is matched exactly: letter "
            f"case, Unicode form and spaces count): give {fixed}" + typed)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _bash_escaped(text: str) -> str:
    """`text` for bash's $'...' quoting: every character past ASCII as \\uXXXX (\\UXXXXXXXX), so a name in one
    Unicode form is typed as it is, not as the keyboard writes it."""
    return "".join(c if c.isascii() and c.isprintable() and c not in "\\'" else
                   f"\\{c}" if c in "\\'" else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
                   for c in text)


def _decoded_root(fs: Any, root: str, where: str) -> str | None:
    """`where` with its %-escapes decoded, when the root they name is there (and the root as given is not)."""
    from urllib.parse import unquote

    if "%" not in root or unquote(root) == root:
        return None
    try:
        return unquote(where) if root_exists(fs, unquote(root)) is True else None
    except Exception:  # noqa: BLE001 - only refines the message; the root as given is missing either way
        return None


def storage_errors() -> tuple[type[BaseException], ...]:
    """The exception types a storage call raises for reasons outside the program: caught and explained."""
    types: list[type[BaseException]] = [OSError, ValueError, TimeoutError, asyncio.TimeoutError]
    for module, name in (("azure.core.exceptions", "AzureError"), ("botocore.exceptions", "BotoCoreError"),
                         ("botocore.exceptions", "ClientError"), ("aiohttp", "ClientError")):
        try:
            types.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


# ----------------------------------------------------------------------------- retries


_NO_ANSWER = {"ReadTimeoutError", "ServiceResponseTimeoutError", "ServerTimeoutError", "FSTimeoutError", "ReadTimeout"}


def no_answer(exc: BaseException) -> bool:
    """The service took the connection and sent nothing back within the read timeout (not: refused, unreachable)."""
    chain = list(_chain(exc))
    return bool({type(e).__name__ for e in chain} & _NO_ANSWER) or any(
        re.search(r"(?i)timeout on reading data|read timed out|timeout on reading", str(e)) for e in chain)


def _waited(exc: BaseException) -> str:
    """', after 34 s and 6 requests': how long `retrying` tried (recorded on the exception it raised), and the
    requests sent (each of its attempts is up to SDK_RETRIES + 1 of the SDK's: all of them, when none is answered);
    or ''."""
    for e in _chain(exc):
        waited = getattr(e, "chorus_waited", None)
        if waited:
            seconds, attempts = waited
            return f", after {seconds:.0f} s and {attempts * (SDK_RETRIES + 1)} requests"
    return ""


def retrying(fn: Callable[[], T], *, attempts: int = RETRY_ATTEMPTS, first_delay: float | None = None,
             max_delay: float = 8.0, deadline_s: float | None = None,
             transient: Callable[[BaseException], bool] = is_transient,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """fn(), again after a transient failure, waiting first_delay (CHORUS_BATCH_RETRY_BASE_S, 0.5 s),
    then twice as long each time (at most max_delay), at most `attempts` times in all. No attempt is
    started that could end past `deadline_s` (CHORUS_BATCH_RETRY_DEADLINE_S, 30 s) after the first:
    the estimate is the longest attempt so far. The last failure is raised as it was."""
    delay = retry_base_s() if first_delay is None else first_delay
    deadline = retry_deadline_s() if deadline_s is None else deadline_s
    start = clock()
    longest = 0.0
    for attempt in range(1, attempts + 1):
        began = clock()
        try:
            return fn()
        except Exception as exc:
            ended = clock()
            longest = max(longest, ended - began)
            if attempt == attempts or not transient(exc) or ended - start + delay + longest > deadline:
                try:  # (for the message: how long the service was tried)
                    exc.chorus_waited = (ended - start, attempt)  # type: ignore[attr-defined]
                except AttributeError:
                    pass
                raise
        sleep(delay)
        delay = min(delay * 2, max_delay)
    raise AssertionError("unreachable")
