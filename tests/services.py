"""Real cloud services for the tests, started by the tests themselves: no mocks, no skips.

Fixtures (session-scoped; conftest.py imports them, so every test file can ask for them):

``azurite`` -> :class:`Azurite`
    Azurite's Blob service (pinned by package.json / package-lock.json; ``scripts/test`` runs
    ``npm ci``) over plain http on a free 127.0.0.1 port, shared-key auth with the well-known
    emulator account ``devstoreaccount1``. ``--loose`` and ``--skipApiVersionCheck`` so any SDK
    version is accepted. ``stop()`` / ``start()`` restart the same process on the same port and
    the same ``--location``, so the data survives (a service restart, not a wipe). Its output goes
    to ``<tmp>/azurite.log``. Without ``node_modules`` the fixture FAILS (never skips) and says to
    run ``scripts/test`` or ``npm ci``.

``azurite_oauth`` -> :class:`AzuriteOAuth`
    A second Azurite over https (certificate made here with ``cryptography``: a throwaway CA
    and a leaf for 127.0.0.1 and localhost) with ``--oauth basic``, plus a small local server
    speaking the App Service managed-identity protocol (``IDENTITY_ENDPOINT`` +
    ``IDENTITY_HEADER``; ``GET ?resource=...&api-version=2019-08-01`` with header
    ``X-IDENTITY-HEADER``). It hands out JWTs signed with a throwaway random HS256 key (nobody checks
    the signature) that Azurite's basic OAuth accepts: Azurite 3.37
    (dist/src/blob/authentication/BlobTokenAuthenticator.js) only *decodes* the token and checks
    that ``iat``, ``nbf`` and ``exp`` are present, ``nbf <= now <= exp``, ``iss`` starts with
    ``https://sts.windows.net/`` (or the other sovereign-cloud STS prefixes) and ``aud`` is
    ``https://storage.azure.com[/]``, ``e406a681-f3d4-42a8-90b6-c2b029497af1`` or
    ``https://<account>.blob.core.windows.net[/]``. The signature and the scope are NOT checked,
    and Bearer is refused over http (hence https).

    For the whole session the CA is trusted by the test process: ``REQUESTS_CA_BUNDLE`` and
    ``SSL_CERT_FILE`` point at certifi's bundle + the test CA (restored at the end). Caveat,
    verified: aiohttp (adlfs's async transport) builds its default verified SSL context ONCE,
    at import (``aiohttp.connector._SSL_CONTEXT_VERIFIED``), so ``SSL_CERT_FILE`` set later
    has no effect on it; the fixture therefore also loads the test CA into that cached context
    if aiohttp is already imported. A CA added to that context cannot be removed again; it
    is a throwaway CA whose key only lives in the session's tmp dir.

    What worked against the https endpoint (proved in tests/test_services.py):
    * sync: ``BlobServiceClient(account_url, credential=azure.identity.DefaultAzureCredential())``
      with ``identity_env`` set and the AZURE_* client variables removed (``identity_environment()``).
    * adlfs: ``AzureBlobFileSystem(account_name="devstoreaccount1",
      account_host="127.0.0.1:PORT/devstoreaccount1", credential=<azure.identity.aio credential>)``
      (adlfs builds ``https://{account_host}``; there is no ``account_url`` argument), or the same
      without ``credential`` and with ``anon=False``: adlfs then makes its own
      ``azure.identity.aio.DefaultAzureCredential``. adlfs's client is async, so a sync
      credential does not work there.

``moto_s3`` -> :class:`MotoS3`
    moto's S3 server (``python -m moto.server``, a subprocess) on a free 127.0.0.1 port,
    credentials ``testing``/``testing``, region us-east-1. Single-part uploads get ETag =
    quoted MD5; multipart uploads (``upload_tree_s3(..., multipart=True)``, parts of 5 MiB,
    moto enforces the S3 minimum) get ``"<hex>-<parts>"``. s3fs's ``find(detail=True)`` /
    ``info`` entries carry the ETag under the key ``"ETag"`` (quotes included).

Helpers: :func:`upload_tree`, :func:`set_content_md5`, :func:`upload_tree_s3`.

NOT covered: real Entra ID sign-in (no token signatures, tenants, RBAC or scopes are checked,
no IMDS/Arc/workload-identity flows, no token refresh against a real authority), Azure features
Azurite lacks (hierarchical namespace / ADLS Gen2 dfs endpoint, soft delete, immutability,
real throttling), real AWS (IAM policies, KMS ETags, consistency quirks), network faults
between client and service. Everything runs on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import http.server
import ipaddress
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's well-known emulator key (public, documented by Microsoft; not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STORAGE_RESOURCE = "https://storage.azure.com"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
S3_PART_SIZE = 5 * 1024 * 1024  # S3's (and moto's) minimum size of every part but the last
START_TIMEOUT = 60.0

_names = itertools.count()


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode} before listening on port {port}; "
                        f"log {log}:\n{_tail(log)}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                _kill(proc)
                pytest.fail(f"{what} did not listen on port {port} within {timeout:.0f}s; log {log}:\n{_tail(log)}",
                            pytrace=False)
            time.sleep(0.05)


def _kill(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _new_name(prefix: str) -> str:
    # Container / bucket names: 3-63 chars, lowercase letters, digits and single hyphens.
    return f"{prefix.lower()}-{next(_names)}-{uuid.uuid4().hex[:10]}"


# ----------------------------------------------------------------------------- Azurite
def _require_azurite() -> None:
    if not AZURITE_BLOB.exists():
        pytest.fail(f"Azurite is not installed ({AZURITE_BLOB} is missing). Run scripts/test (it runs "
                    f"`npm ci --no-audit --no-fund`), or `npm ci --no-audit --no-fund` in {ROOT}.", pytrace=False)
    if shutil.which("node") is None:
        pytest.fail("Azurite needs Node.js but `node` is not on PATH. Run scripts/test (it installs nodejs and "
                    "npm with apt when npm is missing).", pytrace=False)


class Azurite:
    """One Azurite Blob service process; see the module docstring."""

    account_name = ACCOUNT_NAME
    account_key = ACCOUNT_KEY
    scheme = "http"

    def __init__(self, base: Path, port: int | None = None):
        _require_azurite()
        self.base = Path(base)
        self.location = self.base / "data"
        self.location.mkdir(parents=True, exist_ok=True)
        self.log = self.base / "azurite.log"
        self.port = port or free_port()
        self.blob_endpoint = f"{self.scheme}://127.0.0.1:{self.port}/{self.account_name}"
        self.connection_string = (f"DefaultEndpointsProtocol={self.scheme};AccountName={self.account_name};"
                                  f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};")
        self._proc: subprocess.Popen | None = None

    def _extra_args(self) -> list[str]:
        return []

    def start(self) -> None:
        """Start (or restart) on the same port with the same --location: the data survives."""
        if self._proc is not None and self._proc.poll() is None:
            return
        args = [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--location", str(self.location), "--skipApiVersionCheck", "--disableTelemetry", "--loose",
                *self._extra_args()]
        with open(self.log, "ab") as log:
            log.write(f"\n=== start {' '.join(args)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.base)
        _wait_for_port(self.port, self._proc, self.log, "Azurite")

    def stop(self) -> None:
        """SIGTERM and wait (Azurite saves its metadata on the way out)."""
        _kill(self._proc)
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def service_client(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def new_container(self, prefix: str = "c") -> str:
        name = _new_name(prefix)
        with self.service_client() as client:
            client.create_container(name)
        return name

    def fs(self):
        import adlfs

        return adlfs.AzureBlobFileSystem(connection_string=self.connection_string, use_listings_cache=False,
                                         skip_instance_cache=True)


def upload_tree(service_client, container: str, local_root, prefix: str = "", *, content_md5: bool = True,
                blocks: bool = False, md5_override: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Upload every file under ``local_root`` to ``<prefix>/<relative posix path>`` in ``container``.

    * ``content_md5=True``: Content-MD5 = the real MD5 of the bytes (single-shot Put Blob).
    * ``content_md5=False``: Put Blob, then the blob's Content-MD5 is cleared (Put Blob makes
      the service compute one by itself), so it ends up with NO Content-MD5.
    * ``blocks=True``: Put Block (three blocks, fewer for tiny files) + Put Block List, sending
      no Content-MD5 whatever ``content_md5`` says; the service computes none for a block list
      (checked in tests/test_services.py), so the blob has NO Content-MD5, like a large file
      uploaded by azcopy or the SDKs' chunked upload.
    * ``md5_override``: relative path -> 16 bytes stored as Content-MD5 instead (e.g. a wrong
      value, to prove a reader trusts the stored one). Set after the upload with Set Blob
      Properties: Put Blob itself refuses a Content-MD5 that does not match (Md5Mismatch).

    Returns blob name -> real MD5 (16 bytes) of what was uploaded.
    """
    from azure.storage.blob import BlobBlock, ContentSettings

    root = Path(local_root)
    overrides = dict(md5_override or {})
    uploaded: dict[str, bytes] = {}
    container_client = service_client.get_container_client(container)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        name = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
        data = path.read_bytes()
        real = hashlib.md5(data).digest()
        override = overrides.pop(rel, None)
        if override is not None and len(override) != 16:
            raise ValueError(f"Content-MD5 override for {rel} must be 16 bytes, got {len(override)}")
        settings = ContentSettings(content_md5=bytearray(real)) if content_md5 and not blocks else None
        blob = container_client.get_blob_client(name)
        if blocks:
            size = max(1, -(-len(data) // 3))  # three blocks (fewer for files under 3 bytes)
            ids = []
            for i, start in enumerate(range(0, len(data), size)):
                block_id = f"block-{i:06d}"
                blob.stage_block(block_id, data[start:start + size])
                ids.append(BlobBlock(block_id=block_id))
            blob.commit_block_list(ids, content_settings=settings)
        else:
            blob.upload_blob(data, overwrite=True, content_settings=settings)
        # Put Blob checks a Content-MD5 sent with it (Md5Mismatch), so a deliberate wrong value is set
        # afterwards with Set Blob Properties, which stores it unchecked, as Azure does.
        if override is not None:
            set_content_md5(service_client, container, name, override)
        elif not content_md5 and not blocks:
            set_content_md5(service_client, container, name, None)
        uploaded[name] = real
    if overrides:
        raise KeyError(f"md5_override names files not under {root}: {sorted(overrides)}")
    return uploaded


def set_content_md5(service_client, container: str, name: str, md5: bytes | None) -> None:
    """Set (16 bytes) or clear (None) a blob's stored Content-MD5, keeping its other content settings."""
    from azure.storage.blob import ContentSettings

    blob = service_client.get_blob_client(container, name)
    current = blob.get_blob_properties().content_settings
    blob.set_http_headers(ContentSettings(
        content_type=current.content_type, content_encoding=current.content_encoding,
        content_language=current.content_language, content_disposition=current.content_disposition,
        cache_control=current.cache_control, content_md5=bytearray(md5) if md5 is not None else None))


# ----------------------------------------------------------------------------- https + OAuth
def _make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost signed by it.
    Returns (ca.pem, server-cert.pem, server-key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chorus_batch test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server-cert.pem", directory / "server-key.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_storage_jwt(resource: str = STORAGE_RESOURCE, lifetime: int = 3600) -> tuple[str, int]:
    """A token Azurite's ``--oauth basic`` accepts (see module docstring). Returns (token, exp)."""
    now = int(time.time())
    exp = now + lifetime
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    claims = {"aud": resource, "iss": f"https://sts.windows.net/{tenant}/", "iat": now - 60, "nbf": now - 300,
              "exp": exp, "tid": tenant, "oid": str(uuid.uuid4()), "sub": "chorus-batch-test-identity",
              "appid": str(uuid.uuid4()), "ver": "1.0"}
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    signature = hmac.new(os.urandom(32), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(signature)}", exp


class ManagedIdentityServer:
    """App Service managed-identity endpoint (api-version 2019-08-01) on 127.0.0.1, plain http
    like the real one (it is local to the host)."""

    API_VERSION = "2019-08-01"

    def __init__(self):
        self.secret = uuid.uuid4().hex
        self.tokens_issued = 0
        self.requests: list[dict] = []  # every request's query (and the refusals), for tests
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                with server._lock:
                    server.requests.append(query)
                if self.headers.get("X-IDENTITY-HEADER") != server.secret:
                    return self._reply(401, {"error": "invalid_request", "error_description": "bad X-IDENTITY-HEADER"})
                if query.get("api-version") != server.API_VERSION or not query.get("resource"):
                    return self._reply(400, {"error": "invalid_request",
                                             "error_description": "need api-version=2019-08-01 and resource"})
                resource = query["resource"]
                token, exp = make_storage_jwt(resource)
                with server._lock:
                    server.tokens_issued += 1
                self._reply(200, {"access_token": token, "expires_on": str(exp), "resource": resource,
                                  "token_type": "Bearer", "client_id": "00000000-0000-0000-0000-000000000000"})

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/msi/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="managed-identity", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.secret}

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# Variables that would make DefaultAzureCredential pick something other than managed identity.
_OTHER_AZURE_SIGN_IN = ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
                        "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD",
                        "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_TOKEN_CREDENTIALS",
                        "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
                        "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                        "AZURE_STORAGE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET", "AZURE_STORAGE_TENANT_ID",
                        "AZURE_STORAGE_ANON")


@contextlib.contextmanager
def _environ(set_: dict[str, str], remove: tuple[str, ...] = ()):
    saved = {k: os.environ.get(k) for k in (*set_, *remove)}
    try:
        for k in remove:
            os.environ.pop(k, None)
        os.environ.update(set_)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class AzuriteOAuth(Azurite):
    """Azurite over https with ``--oauth basic`` + a managed-identity endpoint; see module docstring."""

    scheme = "https"

    def __init__(self, base: Path, port: int | None = None):
        self.ca_file, self.cert_file, self.key_file = _make_tls(Path(base) / "tls")
        # certifi's roots + the test CA: trusting the test CA must not untrust the rest.
        import certifi

        self.ca_bundle = Path(base) / "tls" / "bundle.pem"
        self.ca_bundle.write_text(Path(certifi.where()).read_text() + "\n" + self.ca_file.read_text())
        super().__init__(base, port)
        self.account_url = self.blob_endpoint
        self.account_host = self.account_url.removeprefix("https://")
        self.identity = ManagedIdentityServer()
        self.identity_env = self.identity.env

    def _extra_args(self) -> list[str]:
        return ["--cert", str(self.cert_file), "--key", str(self.key_file), "--oauth", "basic"]

    @property
    def tokens_issued(self) -> int:
        return self.identity.tokens_issued

    def identity_environment(self):
        """Context manager: ``identity_env`` set and every other Azure sign-in variable removed,
        so ``DefaultAzureCredential`` resolves to the App Service managed identity."""
        return _environ(self.identity_env, _OTHER_AZURE_SIGN_IN)

    def service_client(self, credential=None):
        """Key-based (connection string) for setup; with ``credential``, a token-based client."""
        from azure.storage.blob import BlobServiceClient

        if credential is None:
            return BlobServiceClient.from_connection_string(self.connection_string)
        return BlobServiceClient(self.account_url, credential=credential)

    def oauth_fs(self, credential=None):
        """adlfs over https with a token: ``credential`` must be an azure.identity.aio credential;
        None lets adlfs create its own aio DefaultAzureCredential (call inside identity_environment())."""
        import adlfs

        return adlfs.AzureBlobFileSystem(account_name=self.account_name, account_host=self.account_host,
                                         credential=credential, anon=False, use_listings_cache=False,
                                         skip_instance_cache=True)

    def close(self) -> None:
        self.stop()
        self.identity.close()


def _trust_in_aiohttp(ca_file: Path) -> None:
    """aiohttp caches its verified SSL context at import; add the CA to it (see module docstring).
    Imported here (after SSL_CERT_FILE is set) if nobody has imported it yet."""
    import aiohttp.connector

    context = getattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", None)
    if context is not None:
        context.load_verify_locations(cafile=str(ca_file))


# ----------------------------------------------------------------------------- moto S3
class MotoS3:
    """moto's S3 server as a subprocess; see module docstring."""

    env = dict(AWS_ENV)

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.log = self.base / "moto.log"
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.base, env={**os.environ, **self.env})
        _wait_for_port(self.port, self._proc, self.log, "moto server")

    def stop(self) -> None:
        _kill(self._proc)
        self._proc = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                            region_name=self.env["AWS_DEFAULT_REGION"])

    def new_bucket(self, prefix: str = "b") -> str:
        name = _new_name(prefix)
        self.client().create_bucket(Bucket=name)
        return name

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint_url, key=self.env["AWS_ACCESS_KEY_ID"],
                                 secret=self.env["AWS_SECRET_ACCESS_KEY"],
                                 client_kwargs={"region_name": self.env["AWS_DEFAULT_REGION"]},
                                 use_listings_cache=False, skip_instance_cache=True)


def upload_tree_s3(client, bucket: str, local_root, prefix: str = "", *, multipart: bool = False) -> dict[str, bytes]:
    """Upload every file under ``local_root`` to ``<prefix>/<relative posix path>`` in ``bucket``.
    ``multipart=True``: CreateMultipartUpload + UploadPart (5 MiB parts, the last smaller) +
    Complete, so the ETag is ``"<hex>-<parts>"``, not the MD5. Returns key -> real MD5 (16 bytes)."""
    root = Path(local_root)
    uploaded: dict[str, bytes] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        key = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
        data = path.read_bytes()
        if multipart:
            upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
            parts = []
            for number, start in enumerate(range(0, max(len(data), 1), S3_PART_SIZE), start=1):
                part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=data[start:start + S3_PART_SIZE])
                parts.append({"PartNumber": number, "ETag": part["ETag"]})
            client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                             MultipartUpload={"Parts": parts})
        else:
            client.put_object(Bucket=bucket, Key=key, Body=data)
        uploaded[key] = hashlib.md5(data).digest()
    return uploaded


# ----------------------------------------------------------------------------- fixtures
def running(service):
    """Start a service for a session fixture (`yield from running(...)`); stop it however the session ends."""
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    yield from running(Azurite(tmp_path_factory.mktemp("azurite")))


@pytest.fixture(scope="session")
def azurite_oauth(tmp_path_factory):
    _require_azurite()
    service = AzuriteOAuth(tmp_path_factory.mktemp("azurite-oauth"))
    bundle = str(service.ca_bundle)
    try:
        with _environ({"REQUESTS_CA_BUNDLE": bundle, "SSL_CERT_FILE": bundle}):
            _trust_in_aiohttp(service.ca_file)
            service.start()
            yield service
    finally:
        service.close()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    yield from running(MotoS3(tmp_path_factory.mktemp("moto")))
