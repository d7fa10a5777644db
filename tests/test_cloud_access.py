"""Cloud sign-in (sources/cloud.py): which credential an az:// or s3:// root uses, the errors that say
what to do, scrubbing of secrets, bounded retries, and [azure] / [s3] in chorus.toml.

The pure parts are tested here without a service; the integration tests against Azurite and moto
(real services, started by tests/services.py) follow below them."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError

from chorus_batch.config import AzureSection, CloudSettings, S3Section, load_config
from chorus_batch.errors import ChorusError, ConfigError, SourceError
from chorus_batch.sources import FsspecSource, open_source
from chorus_batch.sources.cloud import (
    azure_sign_in,
    explain,
    filesystem_for,
    is_transient,
    retrying,
    s3_options,
    scrub,
)

from conftest import cli, write

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SIG = "Zm9vYmFyc2VjcmV0c2lnbmF0dXJlMTIzNDU2Nzg5MA%3D%3D"
SAS = f"sv=2024-08-04&ss=b&srt=co&sp=rl&se=2030-01-01T00:00:00Z&sig={SIG}"
CONN = f"DefaultEndpointsProtocol=https;AccountName=myacct;AccountKey={KEY};EndpointSuffix=core.windows.net"
SECRETS = (KEY, SIG, KEY[:20], SIG[:20])
AZURE_VARS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT",
              "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY")


def no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


@pytest.fixture
def clean_env(monkeypatch):
    """No Azure or AWS settings from the machine; tiny backoffs."""
    for name in (*AZURE_VARS, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CHORUS_BATCH_RETRY_BASE_S", "0.01")
    return monkeypatch


def cloud(**azure) -> CloudSettings:
    return CloudSettings(azure=AzureSection(**azure))


# ----------------------------------------------------------------------------- scrub


# texts with secrets in them, as messages and logs quote them (scrub, and the upload script's sed, mask each)
SECRET_TEXTS = [
    f"https://myacct.blob.core.windows.net/c/x?{SAS}",
    CONN,
    f"BlobEndpoint=https://h/;SharedAccessSignature={SAS}",
    f"Authorization: SharedKey myacct:{KEY}",
    f"Authorization: Bearer {KEY}",
    f"HTTP 403: Signature did not match. String to sign used was ... sig={SIG}&x=1",
    f"aws_secret_access_key = {KEY}",
    f"password={KEY}",
    f"https://user:{KEY}@host/path",
    f"X-Amz-Signature={SIG}",
    # %-escaped SAS in free text: 'sig%3D' after '%26' (no word boundary before it) was left as it was
    f"the token was sv%3D2024%26sr%3Dc%26sig%3D{SIG}",
    f"X-Amz-Credential%3DAKIA%26X-Amz-Signature%3D{SIG}",
    # glued to other text: after '...', '(' or '[' (only '?', '&', ';', a space or a quote was a start), URL-encoded
    # (AccountKey%3D, sig%3d), in JSON or a Python dict (an SDK's exception message), in XML, on a command line
    f"...sig={SIG}&foo",
    f"(sig={SIG})",
    f"[sig={SIG}]",
    f"AccountKey=abc{KEY}==;EndpointSuffix=core.windows.net",
    f"DefaultEndpointsProtocol%3Dhttps%3BAccountKey%3D{KEY.replace('/', '%2F').replace('=', '%3D')}%3BEndpointSuffix",
    f"sv%3d2024%26sig%3d{SIG}",
    f'{{"error": {{"url": "https://a.blob.core.windows.net/c?{SAS}", "sig": "{SIG}"}}}}',
    f"{{'sig': '{SIG}', 'account_key': '{KEY}'}}",
    f'{{"AccountKey": "{KEY}"}}',
    f"<Error><SignatureProvided>{SIG}</SignatureProvided></Error>",
    f"The MAC signature found in the HTTP request '{KEY}' is not the same as any computed signature.",
    f"az storage blob upload --account-key {KEY[:40]} --sas-token '{SAS}'",
    f"BlobServiceClient(account_url, credential={KEY[:40]})",
    f"headers={{'X-Amz-Security-Token': b'{SIG}', 'Authorization': b'AWS4-HMAC-SHA256 Signature={SIG}'}}",
    # a secret known by its name's ending, not by a list of names (SECRET_NAME_ENDINGS): a request quoted without its
    # scheme, with a signature-bearing parameter the list did not hold, an S3 presigned URL's older form, GCS's
    f"GET /c/x?sv=2024-08-04&se=2030-01-01&xsig={SIG} 403",
    f"GET /bucket/k?AWSAccessKeyId={KEY[:20]}&Expires=1700000000&Signature={SIG}",
    f"/bucket/k?X-Goog-Credential={KEY[:20]}%2F20240101&X-Goog-Signature={SIG}",
    f"the token was sv%3D2024%26copy_source_sig%3D{SIG}",
    f'{{"AccessToken": "{SIG}", "api_key": "{KEY[:40]}"}}',
]


@pytest.mark.parametrize("text", SECRET_TEXTS)
def test_scrub_removes_secrets(text):
    out = scrub(text)
    no_secret(out)
    assert "***" in out


@pytest.mark.parametrize("text, shown", [
    (f"cannot read az://c/x?sig={SIG}: not found", "cannot read az://c/x?sig=***: not found"),
    (f"see (https://h/x?sig={SIG}).", "see (https://h/x?sig=***)."),
    (f"https://h/x?password={KEY}&y=2, then", "https://h/x?password=***&y=***, then"),
    (f"sig={SIG}&x=1", "sig=***&x=1"),
])
def test_scrub_keeps_what_follows_a_masked_url(text, shown):
    """The colon after a URL was masked with its last query value: "...?sig=*** not found"."""
    assert scrub(text) == shown


@pytest.mark.parametrize("variable, value", [
    ("AZURE_STORAGE_CONNECTION_STRING", CONN),
    ("AZURE_STORAGE_SAS_TOKEN", f"?{SAS}"),
    ("AZURE_STORAGE_KEY", KEY),
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
])
def test_scrub_masks_a_secret_of_the_environment_glued_to_text_or_url_encoded(monkeypatch, variable, value):
    import chorus_batch.urls

    """A variable's value was masked only as given: a connection string's key alone, a SAS token's signature without
    its '?', a key %-escaped in an SDK's message, or glued into a word of it, were shown."""
    from urllib.parse import quote

    from chorus_batch.urls import secret_variable

    monkeypatch.setenv(variable, value)
    secret = KEY if variable == "AZURE_STORAGE_CONNECTION_STRING" else value.lstrip("?")
    for text in (f"x{secret}y", f"body=x{quote(secret, safe='')}y", f"key:{quote(secret)}", secret.replace("/", "\\/")):
        out = scrub(text)
        assert secret not in out and quote(secret, safe="") not in out and "***" in out, (text, out)
        assert not any(secret[i:i + 16] in out for i in range(0, len(secret) - 16, 8)), (text, out)
    # a variable a chorus.toml names for a secret ([azure] account_key_env = "SITE_KEY") is masked as these are
    monkeypatch.setattr(chorus_batch.urls, "_NAMED_SECRET_VARIABLES", set())
    monkeypatch.setenv("SITE_KEY_FOR_TEST", "a-secret-of-no-shape-0123456789")
    assert scrub("hit a-secret-of-no-shape-0123456789!") == "hit a-secret-of-no-shape-0123456789!"
    secret_variable("SITE_KEY_FOR_TEST")
    assert scrub("hit a-secret-of-no-shape-0123456789!") == "hit ***!"


def test_the_shell_mask_of_an_upload_script_masks_what_scrub_masks(monkeypatch):
    """The bash upload script printed the Azure CLI's errors as they were (a SAS, a key quoted from the request): its
    `mask` (SED_SCRUB, and the values of the secret variables) masks each of these texts, in bash and sed, keeping
    what is no secret."""
    from chorus_batch.urls import shell_mask

    aws = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    texts = [*SECRET_TEXTS, f"glued{aws}here", f"the SAS x{SAS}y was refused"]
    script = "\n".join([*shell_mask(("AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_SAS_TOKEN")),
                        'while IFS= read -r -d "" text; do printf "%s" "$text" | mask; printf "\\0"; done'])
    ran = subprocess.run(["bash", "-c", script], input="".join(t + "\0" for t in texts), capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "AWS_SECRET_ACCESS_KEY": aws,
                              "AZURE_STORAGE_SAS_TOKEN": "?" + SAS}, timeout=60)
    assert ran.returncode == 0 and not ran.stderr, ran.stderr
    masked = ran.stdout.split("\0")[:-1]
    assert len(masked) == len(texts), masked
    for text, out in zip(texts, masked):
        no_secret(out)
        assert aws not in out and "***" in out, (text, out)
    kept = "container site1 of account myacct: ContainerNotFound (se=2030-01-01T00:00:00Z)"
    assert subprocess.run(["bash", "-c", "\n".join([*shell_mask(()), "mask"])], input=kept, capture_output=True,
                          text=True, timeout=60).stdout == kept + "\n"


def test_scrub_keeps_what_is_not_secret():
    text = "container site1 of account myacct: ContainerNotFound (se=2030-01-01T00:00:00Z)"
    assert scrub(text) == text
    # a SAS's other parameters, and names that only hold a secret's word, are no secrets
    text = "sv=2024-08-04&se=2030-01-01&sp=rl&skoid=0000-1111 tokens=3 signatures=2 key=000123/a.dcm"
    assert scrub(text) == text
    assert "AccountName=myacct" in scrub(CONN)


# ----------------------------------------------------------------------------- which Azure sign-in


def test_connection_string_first(clean_env):
    env = {"AZURE_STORAGE_CONNECTION_STRING": CONN, "AZURE_STORAGE_SAS_TOKEN": SAS, "AZURE_STORAGE_KEY": KEY,
           "AZURE_STORAGE_ACCOUNT": "other"}
    sign_in = azure_sign_in(cloud(account_name="myacct"), env)
    assert sign_in.kind == "connection_string"
    assert sign_in.how == "connection string from AZURE_STORAGE_CONNECTION_STRING (account myacct)"
    assert KEY not in repr(sign_in)


@pytest.mark.parametrize("azure, refused", [
    ({"account_name": "other"}, "[azure] account_name"),
    ({"account_url": "https://other.blob.core.windows.net"}, "[azure] account_url"),
    ({"account_url": "http://127.0.0.1:10000/other"}, "[azure] account_url"),
    ({"account_name": "myacct"}, None), ({"account_url": "https://MyAcct.blob.core.windows.net/"}, None),
    ({"account_url": "https://storage.example.org"}, None),  # a custom domain names no account: nothing to compare
])
def test_a_connection_string_for_another_account_than_chorus_toml_names_is_refused(clean_env, azure, refused):
    """[azure] account_name = "other" with AZURE_STORAGE_CONNECTION_STRING for myacct (a variable left from the upload
    to the central container, another project): the connection string signed in first, silently, and the run read
    the container of that name in myacct. Now a configuration error naming both settings and both accounts."""
    env = {"AZURE_STORAGE_CONNECTION_STRING": CONN}
    if refused is None:
        assert azure_sign_in(cloud(**azure), env).account_name == "myacct"
        return
    with pytest.raises(ConfigError) as caught:
        azure_sign_in(cloud(**azure), env)
    text = str(caught.value)
    assert f"{refused} names the storage account 'other'" in text and "for the account 'myacct'" in text, text
    assert caught.value.where == f"{refused} and AZURE_STORAGE_CONNECTION_STRING"  # type: ignore[attr-defined]
    assert "unset AZURE_STORAGE_CONNECTION_STRING" in caught.value.fix and KEY not in text  # type: ignore[attr-defined]


def test_a_run_whose_connection_string_is_for_another_account_than_chorus_toml_exits_2(clean_env, azurite, az_site,
                                                                                      tmp_path):
    config = tmp_path / "chorus.toml"
    config.write_text('[azure]\naccount_url = "http://127.0.0.1:1/otheracct"\n')
    db = tmp_path / "m.sqlite"
    out = cli("run", "--config", str(config), "--site", f"az://{az_site}", "--db", str(db), "--no-validate",
              env={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "names the storage account 'otheracct'" in out.stderr and "'devstoreaccount1'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and azurite.account_key not in out.stdout + out.stderr and not db.exists()


def test_sas_then_key_then_default_credential(clean_env):
    env = {"AZURE_STORAGE_SAS_TOKEN": "?" + SAS, "AZURE_STORAGE_KEY": KEY, "AZURE_STORAGE_ACCOUNT": "myacct"}
    sas = azure_sign_in(cloud(), env)
    assert (sas.kind, sas.account_url, sas.secret) == ("sas", "https://myacct.blob.core.windows.net", SAS)
    assert sas.how == ("SAS token from AZURE_STORAGE_SAS_TOKEN for account myacct (AZURE_STORAGE_ACCOUNT), valid until "
                       "2030-01-01T00:00:00Z")  # (its se=: a run may outlive it)
    del env["AZURE_STORAGE_SAS_TOKEN"]
    key = azure_sign_in(cloud(), env)
    assert (key.kind, key.account_name) == ("account_key", "myacct")
    assert key.how == "account key from AZURE_STORAGE_KEY for account myacct (AZURE_STORAGE_ACCOUNT)"
    del env["AZURE_STORAGE_KEY"]
    default = azure_sign_in(cloud(), env)
    assert default.kind == "default_credential" and default.secret is None
    assert default.how.startswith("DefaultAzureCredential (environment, workload identity, managed identity, Azure CLI")
    assert default.how.endswith("for https://myacct.blob.core.windows.net (AZURE_STORAGE_ACCOUNT)")


def test_default_credential_to_an_http_account_is_a_configuration_to_fix(clean_env, tmp_path):
    """No key, SAS or connection string for an http:// account (an emulator): the SDK takes a token only over https,
    and verify said "internal error: ValueError: Token credential is only supported with HTTPS" (exit 3)."""
    with pytest.raises(ConfigError) as refused:
        azure_sign_in(cloud(account_url="http://127.0.0.1:10000/devstoreaccount1"), {})
    assert "signs in only over https" in str(refused.value) and "AZURE_STORAGE_SAS_TOKEN" in refused.value.fix
    (tmp_path / "chorus.toml").write_text('[azure]\naccount_url = "http://127.0.0.1:9/devstoreaccount1"\n')
    (tmp_path / "site").mkdir()
    out = cli("run", "--site", "az://site1/x", "--db", str(tmp_path / "m.sqlite"), cwd=tmp_path)
    assert out.returncode == 2 and "signs in only over https" in out.stderr, out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr and "fix:" in out.stderr


@pytest.mark.parametrize("url, name, refused", [
    ("https://myacct.blob.core.windows.net", "otheracct", True),
    ("http://127.0.0.1:10000/devstoreaccount1", "myacct", True),
    ("https://MyAcct.blob.core.windows.net/", "myacct", False),
    ("http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1", False),
])
def test_account_url_and_account_name_of_two_accounts_are_refused(tmp_path, clean_env, url, name, refused):
    """[azure] account_url and account_name naming two accounts (the README's example account_url left beside the
    site's account_name) signed in to account_url's, silently: another account's container read and written. The
    same account written both ways is taken."""
    config = tmp_path / "chorus.toml"
    config.write_text(f'[site]\nroot = "site"\n\n[azure]\naccount_url = "{url}"\naccount_name = "{name}"\n')
    if not refused:
        assert load_config(config).azure.account_name == name
        return
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert "name two storage accounts, and the run signs in to one only: give one of them" in caught.value.what
    assert caught.value.where == f"{config}, line 4: [azure]"
    out = cli("status", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2 and f"account_name ('{name}')" in out.stderr and "Traceback" not in out.stderr


def test_account_from_config_before_environment(clean_env):
    env = {"AZURE_STORAGE_ACCOUNT": "fromenv"}
    assert azure_sign_in(cloud(account_name="fromconfig"), env).account_url == "https://fromconfig.blob.core.windows.net"
    custom = azure_sign_in(cloud(account_url="https://127.0.0.1:10001/devstoreaccount1/"), env)
    assert (custom.account_url, custom.account_name) == ("https://127.0.0.1:10001/devstoreaccount1", "devstoreaccount1")
    assert "[azure] account_url" in custom.how


def test_variables_named_in_config(clean_env):
    settings = cloud(account_name="myacct", sas_token_env="SITE_A_SAS", connection_string_env="SITE_A_CONN")
    env = {"AZURE_STORAGE_SAS_TOKEN": "ignored", "SITE_A_SAS": SAS}
    sign_in = azure_sign_in(settings, env)
    assert (sign_in.kind, sign_in.secret, sign_in.secret_env) == ("sas", SAS, "SITE_A_SAS")
    assert azure_sign_in(settings, {**env, "SITE_A_CONN": CONN}).kind == "connection_string"


def test_no_account_is_a_config_error_naming_every_option(clean_env):
    with pytest.raises(ConfigError) as caught:
        azure_sign_in(cloud(), {})
    text = str(caught.value)
    for option in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY",
                   "AZURE_STORAGE_ACCOUNT", "[azure] account_url", "az login", "managed"):
        assert option in text


def test_open_source_without_account_exits_2_not_a_traceback(clean_env, tmp_path):
    result = cli("run", "--site", "az://missing-container", "--db", str(tmp_path / "m.sqlite"),
                 env={"CHORUS_BATCH_RETRY_BASE_S": "0.01"}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no Azure storage account" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_unreachable_endpoint_exits_3_with_what_where_fix(clean_env, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "chorus.toml"
    config.write_text(f'[azure]\naccount_url = "http://127.0.0.1:{port}/devstoreaccount1"\n')
    started = time.monotonic()
    result = cli("run", "--config", str(config), "--site", "az://missing-container", "--db", str(tmp_path / "m.sqlite"),
                 env={"AZURE_STORAGE_KEY": KEY, "CHORUS_BATCH_RETRY_BASE_S": "0.01"}, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "cannot reach az://missing-container: the storage endpoint cannot be reached" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "where:" in result.stderr and "fix:" in result.stderr
    assert "account key from AZURE_STORAGE_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    no_secret(result.stderr + result.stdout)
    assert time.monotonic() - started < 60


def test_every_cannot_be_reached_hint_names_the_host(clean_env, tmp_path):
    # The sync Azure client (upload, verify, mark-uploaded, a manifest in Azure) says "HTTPConnection(host='…', port=…)", which
    # the hint did not read: "check that the storage endpoint is reachable", naming no host; nor did "does not resolve".
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    assert cli("run", "--site", str(tmp_path / "site"), "--db", str(db), "--no-validate").returncode in (0, 1)
    env = {"CHORUS_BATCH_RETRY_BASE_S": "0.01", "CHORUS_BATCH_RETRY_DEADLINE_S": "1",
           "AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                                              f"AccountKey={KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"}
    for args in (("upload", "--db", str(db), "--to", "az://central/"),
                 ("run", "--site", str(tmp_path / "site"), "--db", "az://cnt/m.sqlite", "--no-validate")):
        out = cli(*args, env=env, timeout=120)
        assert out.returncode == 3, out.stderr
        fix = next(line for line in out.stderr.splitlines() if line.strip().startswith("fix:"))
        assert f"check that 127.0.0.1:{port} is reachable" in fix, (args, out.stderr)
    dns = {**env, "AZURE_STORAGE_CONNECTION_STRING": env["AZURE_STORAGE_CONNECTION_STRING"].replace(
        f"127.0.0.1:{port}", "no-such-host.invalid:10000")}
    out = cli("upload", "--db", str(db), "--to", "az://central/", env=dns, timeout=120)
    assert out.returncode == 3 and "the storage host no-such-host.invalid:10000 does not resolve" in out.stderr, out.stderr


def test_an_s3_endpoint_that_cannot_be_reached_is_named_by_its_host_not_by_a_request(clean_env, tmp_path):
    """botocore names the request's URL: the hint said "check that http://127.0.0.1:1/site1?list-type=***&prefix=***&…
    is reachable" (a query masked as if it held secrets), and "the storage host http://…/site1?… does not resolve"."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"CHORUS_BATCH_RETRY_DEADLINE_S": "1", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x" * 40,
           "AWS_DEFAULT_REGION": "us-east-1"}
    for endpoint, says in ((f"http://127.0.0.1:{port}", f"fix:   check that 127.0.0.1:{port} is reachable from"),
                           ("http://no-such-host.invalid:9000", "the storage host no-such-host.invalid:9000 does not resolve")):
        out = cli("run", "--site", "s3://site1/export", "--db", str(tmp_path / "m.sqlite"), "--no-validate",
                  env={**env, "AWS_ENDPOINT_URL": endpoint}, timeout=120)
        assert out.returncode == 3 and says in out.stderr, out.stderr
        hint = next(line for line in out.stderr.splitlines() if says in line)
        assert "list-type" not in hint.partition(says)[2] and "/site1" not in hint.partition(says)[2], out.stderr
        assert "list-type" not in out.stderr and "***" not in out.stderr, out.stderr  # (nor in the reason)


# ----------------------------------------------------------------------------- S3 options


def test_s3_options_endpoint_profile_region(clean_env):
    options, how = s3_options(CloudSettings(s3=S3Section(endpoint_url="http://127.0.0.1:9000", profile="chorus",
                                                          region="eu-west-1")), {})
    assert options["endpoint_url"] == "http://127.0.0.1:9000"
    assert options["profile"] == "chorus" and options["client_kwargs"] == {"region_name": "eu-west-1"}
    assert options["skip_instance_cache"] and options["use_listings_cache"] is False
    assert how == "AWS profile chorus ([s3] profile) at http://127.0.0.1:9000 ([s3] endpoint_url), region eu-west-1"
    options, how = s3_options(CloudSettings(), {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "AKIA"})
    assert options["endpoint_url"] == "http://minio:9000" and "profile" not in options
    assert how == "access key from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY at http://minio:9000 (AWS_ENDPOINT_URL)"


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "http://127.0.0.1:9000/sub", "http://127.0.0.1:9000?X-Amz-Signature=SECRETSIG",
                                      "http://AKIAEXAMPLE:SECRETSIG@127.0.0.1:9000", "ftp://127.0.0.1:9000"])
def test_an_s3_endpoint_from_the_environment_is_held_to_the_form_of_the_setting(clean_env, tmp_path, variable, endpoint):
    """[s3] endpoint_url = <these> is refused up front (exit 2); the same in AWS_ENDPOINT_URL was used as it was and the
    run failed at its first request, exit 3: "ValueError: Invalid endpoint", "the bucket site1 does not exist" (a path),
    "the storage endpoint cannot be reached" (credentials in it), all to be fixed in the environment."""
    out = cli("run", "--site", "s3://site1/export", "--db", str(tmp_path / "m.sqlite"), "--no-validate",
              env={variable: endpoint, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x" * 40,
                   "CHORUS_BATCH_RETRY_DEADLINE_S": "1"})
    assert out.returncode == 2, out.stderr
    assert f"{variable} is not an S3 endpoint" in out.stderr and f"where: {variable}" in out.stderr, out.stderr
    assert "fix:" in out.stderr and "Traceback" not in out.stderr and "SECRETSIG" not in out.stdout + out.stderr
    assert not (tmp_path / "m.sqlite").exists()
    # what the setting accepts, the variable accepts too
    options, how = s3_options(CloudSettings(), {variable: "https://minio.example.org:9000/"})
    assert options["endpoint_url"] == "https://minio.example.org:9000/" and f"({variable})" in how


def test_s3_without_s3fs_says_what_to_install(clean_env, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(ConfigError, match=r"chorus-batch\[s3\]"):
        filesystem_for("s3://bucket/site", CloudSettings())


def test_other_protocols_are_plain_fsspec():
    fs, root, how = filesystem_for("memory://plain/site")
    assert "memory" in fs.protocol and root == "/plain/site" and how == "fsspec memory://"


def test_each_root_gets_its_own_file_system(clean_env):
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", CONN)
    a, b = (FsspecSource("az://cnt/site") for _ in range(2))
    assert a.fs is not b.fs and a.fs.service_client is not b.fs.service_client
    assert a.server_md5 and a.root == "cnt/site"
    assert KEY not in a.how and KEY not in a.location


# ----------------------------------------------------------------------------- explain


def _storage_error(cls, status: int, code: str, message: str):
    error = cls(message=message)
    error.status_code, error.error_code = status, code  # as azure.storage.blob's process_storage_error sets them
    return error


def _wrapped(inner: BaseException, outer_cls=ValueError, text="Failed to fetch container properties for c") -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer_cls(f"{text} for {exc}") from exc
    except BaseException as outer:
        return outer


def _botocore(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "ListObjectsV2")


HOW_SAS = "SAS token from AZURE_STORAGE_SAS_TOKEN for account myacct (AZURE_STORAGE_ACCOUNT)"
HOW_DAC = "DefaultAzureCredential (environment, ...) for https://myacct.blob.core.windows.net"
HOW_AWS = "AWS profile chorus ([s3] profile)"


@pytest.mark.parametrize("exc, how, kind, says", [
    (_storage_error(ResourceNotFoundError, 404, "ContainerNotFound", "The specified container does not exist."),
     HOW_SAS, "missing", "the container does not exist"),
    (_storage_error(ClientAuthenticationError, 403, "AuthenticationFailed",
                    f"Server failed to authenticate the request. sig={SIG}"), HOW_SAS, "auth", "sign-in failed"),
    (_storage_error(ClientAuthenticationError, 403, "AuthenticationFailed", "Server failed to authenticate the request."),
     HOW_SAS + ", valid until 2020-01-01T00:00:00Z", "auth", "the SAS token expired at 2020-01-01T00:00:00Z"),
    (_storage_error(ClientAuthenticationError, 403, "AuthenticationFailed", "Server failed to authenticate the request."),
     HOW_SAS + ", valid until 2099-01-01T00:00:00Z", "auth", "sign-in failed"),  # (not expired: another cause)
    (_storage_error(ClientAuthenticationError, 403, "AuthorizationPermissionMismatch",
                    "This request is not authorized to perform this operation using this permission."),
     HOW_DAC, "permission", "not allowed to list or read"),
    (CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token from the included credentials."),
     HOW_DAC, "auth", "sign-in failed"),
    (_wrapped(ServiceRequestError("Cannot connect to host 127.0.0.1:10000 ssl:default [Connect call failed]",
                                  error=ConnectionRefusedError(111, "Connection refused"))),
     HOW_SAS, "network", "cannot be reached"),
    (ServiceResponseError("Timeout on reading data from socket"), HOW_SAS, "network",  # (connected, no answer)
     "the storage endpoint did not answer: no response within"),
    (ServiceRequestError("Cannot connect to host nosuch.blob.core.windows.net:443",
                         error=socket.gaierror(-2, "Name or service not known")), HOW_SAS, "dns", "does not resolve"),
    (_storage_error(HttpResponseError, 503, "ServerBusy", "The server is busy."), HOW_SAS, "busy", "kept failing"),
    (_botocore("NoSuchBucket", 404), HOW_AWS, "missing", "the bucket does not exist"),
    (_botocore("AccessDenied", 403), HOW_AWS, "permission", "not allowed"),
    (_botocore("InvalidAccessKeyId", 403), HOW_AWS, "auth", "sign-in failed"),
    (_wrapped(_botocore("SlowDown", 503), PermissionError, "throttled"), HOW_AWS, "busy", "kept failing"),
])
def test_explain_classifies_and_says_what_to_do(exc, how, kind, says):
    error = explain(exc, where="az://cnt/site", how=how, action="list")
    assert isinstance(error, SourceError)
    assert error.kind == kind  # type: ignore[attr-defined]
    text = str(error)
    assert says in error.what and how in error.what
    assert error.where == "az://cnt/site" and error.fix and "fix:" in text
    no_secret(text)


def test_explain_fixes_match_the_sign_in():
    expired = _storage_error(ClientAuthenticationError, 403, "AuthenticationFailed", "Signed expiry time has passed")
    assert "expired" in explain(expired, where="w", how=HOW_SAS, action="list").fix
    # A new SAS for an upload needs to write too: the fix names racwl there, rl for what only reads.
    assert "read (r) and list (l)" in explain(expired, where="w", how=HOW_SAS, action="read").fix
    assert "(racwl)" in explain(expired, where="w", how=HOW_SAS, action="upload to").fix
    assert "(racwl)" in explain(expired, where="w", how=HOW_SAS, action="list", writes=True).fix
    assert "az login" in explain(CredentialUnavailableError("no"), where="w", how=HOW_DAC, action="list").fix
    denied = _storage_error(ClientAuthenticationError, 403, "AuthorizationPermissionMismatch", "no")
    assert "Storage Blob Data Reader" in explain(denied, where="w", how=HOW_DAC, action="list").fix
    assert "s3:ListBucket" in explain(_botocore("AccessDenied", 403), where="w", how=HOW_AWS, action="list").fix


def test_explain_unknown_error_keeps_its_text_without_secrets():
    error = explain(RuntimeError(f"odd failure with {CONN}"), where="az://c", how=HOW_SAS, action="list")
    assert "odd failure" in error.what and error.kind == "other"  # type: ignore[attr-defined]
    no_secret(str(error))


# ----------------------------------------------------------------------------- retrying


def test_transient_failures_are_retried_with_backoff():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ServiceRequestError("Cannot connect", error=ConnectionRefusedError(111, "refused"))
        return "ok"

    assert retrying(flaky, first_delay=0.5, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and sleeps == [0.5, 1.0]


def test_permanent_failures_are_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise _storage_error(ClientAuthenticationError, 403, "AuthenticationFailed", "bad key")

    with pytest.raises(ClientAuthenticationError):
        retrying(denied, sleep=lambda _s: None)
    assert len(calls) == 1
    assert not is_transient(CredentialUnavailableError("x")) and is_transient(TimeoutError("t"))
    assert is_transient(_storage_error(HttpResponseError, 429, "TooManyRequests", "slow down"))


def test_retrying_stops_at_attempts_and_deadline():
    now = [0.0]

    def slow_failure():
        now[0] += 10.0  # each attempt takes 10 s
        raise TimeoutError("timed out")

    sleeps: list[float] = []
    with pytest.raises(TimeoutError):
        retrying(slow_failure, attempts=10, first_delay=1.0, deadline_s=30.0,
                 sleep=lambda s: (sleeps.append(s), now.__setitem__(0, now[0] + s)), clock=lambda: now[0])
    assert now[0] <= 30.0 and len(sleeps) == 1  # a third attempt could have ended past the deadline
    calls = []
    with pytest.raises(TimeoutError):
        retrying(lambda: calls.append(1) or (_ for _ in ()).throw(TimeoutError("t")), attempts=3, first_delay=0,
                 sleep=lambda _s: None)
    assert len(calls) == 3


def test_retry_base_from_environment(monkeypatch):
    monkeypatch.setenv("CHORUS_BATCH_RETRY_BASE_S", "0.001")
    sleeps: list[float] = []
    with pytest.raises(TimeoutError):
        retrying(lambda: (_ for _ in ()).throw(TimeoutError("t")), sleep=sleeps.append)
    assert sleeps == [0.001, 0.002, 0.004]


# ----------------------------------------------------------------------------- config


def test_config_reads_azure_and_s3_into_run_settings(tmp_path):
    from chorus_batch import cli as cli_module

    config = tmp_path / "chorus.toml"
    config.write_text('[site]\nroot = "az://site"\n[site.roots]\nImages = "s3://bucket/images"\n'
                      '[azure]\naccount_name = "myacct"\nsas_token_env = "SITE_SAS"\n'
                      '[s3]\nendpoint_url = "http://127.0.0.1:9000"\nprofile = "chorus"\nregion = "us-east-1"\n')
    args = cli_module._parser().parse_args(["run", "--config", str(config), "--db", str(tmp_path / "m.sqlite")])
    settings = cli_module._run_settings(args, cli_module._resolve(args))
    assert settings.cloud.azure.account_name == "myacct" and settings.cloud.azure.sas_token_env == "SITE_SAS"
    assert settings.cloud.azure.connection_string_env == "AZURE_STORAGE_CONNECTION_STRING"
    assert settings.cloud.s3 == S3Section(endpoint_url="http://127.0.0.1:9000", profile="chorus", region="us-east-1")
    assert settings.roots == {"Images": "s3://bucket/images"}


@pytest.mark.parametrize("section, line", [
    ("azure", f'account_key = "{KEY}"'),
    ("azure", f'sas_token = "{SAS}"'),
    ("azure", f'connection_string = "{CONN}"'),
    ("azure", f'connection_string_env = "{CONN}"'),
    ("azure", f'account_url = "https://myacct.blob.core.windows.net/?{SAS}"'),
    # a password in the endpoint's URL was taken, and sent to the storage
    ("azure", f'account_url = "https://user:{KEY}@myacct.blob.core.windows.net"'),
    ("azure", f'account_url = "http://user:{SIG}@127.0.0.1:10000/devstoreaccount1"'),
    ("s3", f'endpoint_url = "https://AKIAEXAMPLE:{KEY}@s3.example.org"'),
    ("s3", f'aws_secret_access_key = "{KEY}"'),
    ("s3", f'secret = "{KEY}"'),
])
def test_secrets_in_config_are_refused(tmp_path, section, line):
    config = tmp_path / "chorus.toml"
    config.write_text(f"[{section}]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value)
    assert "secret" in text and "environment" in text
    no_secret(text)


@pytest.mark.parametrize("setting, value", [("account_key_env", f'"{KEY}"'), ("sas_token_env", f'"{SIG}"'),
                                            ("connection_string_env", f'"{KEY};"'),
                                            ("account_key_env", f'["{KEY}"]')])
def test_a_secret_written_in_place_of_a_variables_name_is_not_quoted(tmp_path, setting, value):
    """account_key_env = "<the key itself>": refused as no variable's name, and the message quoted its first 12
    characters (a cron mail, a CI log then held part of the key)."""
    config = tmp_path / "chorus.toml"
    config.write_text(f'[azure]\naccount_name = "myacct"\n{setting} = {value}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value) + (caught.value.fix or "")
    assert f"azure.{setting}" in text and ("environment variable's name" in text and "rotate it" in text
                                           or "not shown" in text), text
    assert KEY[:6] not in text and SIG[:6] not in text, text


def test_unknown_cloud_setting_is_refused(tmp_path):
    config = tmp_path / "chorus.toml"
    config.write_text('[azure]\naccount = "myacct"\n')
    with pytest.raises(ConfigError, match="azure.account"):
        load_config(config)
    config.write_text('[azure]\nsas_token_env = "NOT A NAME"\n')
    with pytest.raises(ConfigError, match="environment variable"):
        load_config(config)


def test_open_source_passes_cloud_settings(clean_env):
    clean_env.setenv("AZURE_STORAGE_KEY", KEY)
    source = open_source("az://cnt/site", cloud=cloud(account_url="http://127.0.0.1:1/devstoreaccount1"))
    assert isinstance(source, FsspecSource)
    assert source.how == "account key from AZURE_STORAGE_KEY for account devstoreaccount1 ([azure] account_url)"
    assert str(source.fs.service_client.url).startswith("http://127.0.0.1:1/devstoreaccount1")


# ----------------------------------------------------------------------------- against real services
# Azurite (http, shared key), Azurite over https with OAuth and a managed-identity endpoint, and moto's
# S3 server, started by tests/services.py for the session.


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


SITE_FILES = {"OMOP/person.csv": b"person_id\n1\n", "1/Images/2024/a.dcm": b"dicom-a", "1/Waveforms/s1/r.hea": b"hea"}


@pytest.fixture
def az_site(azurite, tmp_path):
    from services import upload_tree

    container = azurite.new_container("site")
    with azurite.service_client() as client:
        upload_tree(client, container, _tree(tmp_path / "up", SITE_FILES))
    return container


def _azurite_cloud(azurite) -> CloudSettings:
    return cloud(account_url=azurite.blob_endpoint)


def _listed(source) -> set[str]:
    source.check()
    errors: list = []
    return {path for batch in source.list_files(errors) for path in batch.column("srcfile").to_pylist()}


def test_azurite_connection_string(clean_env, azurite, az_site):
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    source = open_source(f"az://{az_site}")
    assert _listed(source) == set(SITE_FILES)
    assert source.how == "connection string from AZURE_STORAGE_CONNECTION_STRING (account devstoreaccount1)"


def test_azurite_sas_token_from_environment(clean_env, azurite, az_site):
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(azurite.account_name, az_site, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    clean_env.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
    clean_env.setenv("AZURE_STORAGE_ACCOUNT", "ignored")  # [azure] account_url comes first
    source = open_source(f"abfs://{az_site}", cloud=_azurite_cloud(azurite))
    assert _listed(source) == set(SITE_FILES)
    assert source.how.startswith("SAS token from AZURE_STORAGE_SAS_TOKEN for account devstoreaccount1")
    with source.open("OMOP/person.csv") as f:
        assert f.read() == SITE_FILES["OMOP/person.csv"]
    # the same token without list permission: signed in, not allowed, and said so
    clean_env.setenv("AZURE_STORAGE_SAS_TOKEN", generate_container_sas(
        azurite.account_name, az_site, account_key=azurite.account_key, permission=ContainerSasPermissions(read=True),
        expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)))
    with pytest.raises(SourceError) as caught:
        open_source(f"az://{az_site}", cloud=_azurite_cloud(azurite)).check()
    assert caught.value.kind == "permission" and "(l)" in caught.value.fix  # type: ignore[attr-defined]
    assert "sig=" not in str(caught.value) or "sig=***" in str(caught.value)
    # the token's sp= says what it lacks: named (it was "not allowed to list or read", of a token that may read)
    assert "not allowed to list (l): the SAS token allows only 'r'" in str(caught.value), str(caught.value)


def test_azurite_account_key_from_environment(clean_env, azurite, az_site):
    clean_env.setenv("AZURE_STORAGE_KEY", azurite.account_key)
    source = open_source(f"az://{az_site}/1", cloud=_azurite_cloud(azurite))
    assert _listed(source) == {"Images/2024/a.dcm", "Waveforms/s1/r.hea"}


def test_a_sas_token_that_may_list_but_not_read_says_so_per_file_and_not_that_the_site_is_empty(clean_env, azurite,
                                                                                               az_site, tmp_path):
    """A SAS token with list (l) but not read (r) permission, on a first run that downloads: every blob was
    recorded as "permission denied: this user may not read the file (give it read permission)" (a local file's
    words: no user, no file mode to give), and the summary said "the site lists no files ... check that the site
    root is the folder": untrue, it listed every blob. Each blob now says the sign-in and the permission to ask
    for, and the summary that none of the files listed could be taken."""
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    config = tmp_path / "chorus.toml"
    config.write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    sas = generate_container_sas(azurite.account_name, az_site, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(list=True),
                                 expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    out = cli("run", "--config", str(config), "--site", f"az://{az_site}", "--db", str(tmp_path / "m.sqlite"),
              "--cloud-md5", "download", "--no-validate", "-q",
              env={"AZURE_STORAGE_SAS_TOKEN": sas, "CHORUS_BATCH_RETRY_BASE_S": "0.01"})
    assert out.returncode == 1, out.stderr
    assert "this user may not read" not in out.stdout and "site lists no files" not in out.stdout, out.stdout
    assert f"no file the site lists could be recorded ({len(SITE_FILES)} errors, below)" in out.stdout, out.stdout
    line = next(line for line in out.stdout.splitlines() if "OMOP/person.csv:" in line)
    assert "not allowed to read" in line and "SAS token from AZURE_STORAGE_SAS_TOKEN" in line, line
    assert "read (r)" in line and "sig=" not in out.stdout + out.stderr, line
    # what the token lacks, from its sp= (it was asked for "read (r) and list (l)" as if it could do neither)
    assert "(the SAS token allows only 'l', its sp=: it lacks read (r))" in line, line


def test_a_missing_cloud_modality_root_is_named_as_the_setting_that_gave_it(clean_env, azurite, az_site, tmp_path):
    """A [site.roots] Waveforms = "az://..." that is not there (a prefix or container gone or mistyped) said "site
    root not found" and "point --site (or root in chorus.toml) at the container/prefix that holds OMOP/ and the person
    folders": the site root was fine, and a modality root holds no OMOP/. It now names [site.roots] Waveforms and
    what that root holds, as a local modality root's message does."""
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    config = tmp_path / "chorus.toml"
    for url in (f"az://{az_site}/no-such-prefix", "az://no-such-container-w/x"):
        config.write_text(f'[site]\nroot = "site"\n[site.roots]\nWaveforms = "{url}"\n[manifest]\ndb = "m.sqlite"\n')
        out = cli("run", "--config", str(config), "--no-validate",
                  env={"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "CHORUS_BATCH_RETRY_BASE_S": "0.01"})
        assert out.returncode == 3, out.stderr
        assert "root of [site.roots] Waveforms not found" in out.stderr and "holds OMOP/" not in out.stderr, out.stderr
        assert "--site" not in out.stderr and "[site] root" not in out.stderr, out.stderr
        # a first run: there is no manifest whose versions `chorus-batch versions` would list (it said so)
        assert f"nothing was committed; no manifest was made at {tmp_path / 'm.sqlite'}" in out.stderr, out.stderr
        assert "chorus-batch versions" not in out.stderr and not (tmp_path / "m.sqlite").exists()


def test_azurite_missing_container_and_bad_key(clean_env, azurite, az_site):
    clean_env.setenv("AZURE_STORAGE_KEY", azurite.account_key)
    with pytest.raises(SourceError) as caught:
        open_source("az://no-such-container/site", cloud=_azurite_cloud(azurite)).check()
    assert caught.value.kind == "missing" and "container no-such-container does not exist" in caught.value.what  # type: ignore[attr-defined]
    assert caught.value.where == "az://no-such-container/site" and caught.value.fix
    bad = "A" + azurite.account_key[1:] if not azurite.account_key.startswith("A") else "B" + azurite.account_key[1:]
    clean_env.setenv("AZURE_STORAGE_KEY", bad)
    with pytest.raises(SourceError) as caught:
        open_source(f"az://{az_site}", cloud=_azurite_cloud(azurite)).check()
    text = str(caught.value)
    assert caught.value.kind == "auth" and "sign-in failed" in text  # type: ignore[attr-defined]
    assert "account key from AZURE_STORAGE_KEY" in text and "rotated" in caught.value.fix
    assert azurite.account_key not in text and bad not in text and bad[:24] not in text


def test_azurite_stopped_fails_fast_and_clearly(clean_env, azurite, az_site):
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    clean_env.setenv("CHORUS_BATCH_RETRY_BASE_S", "0.05")
    source = open_source(f"az://{az_site}")
    azurite.stop()
    try:
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            source.check()
        elapsed = time.monotonic() - started
    finally:
        azurite.start()
    text = str(caught.value)
    assert caught.value.kind == "network" and "cannot be reached" in text  # type: ignore[attr-defined]
    assert f"127.0.0.1:{azurite.port}" in text and "fix:" in text
    assert azurite.account_key not in text and "AccountKey=Eby8" not in text
    assert elapsed < 15, elapsed
    assert _listed(source) == set(SITE_FILES)  # the same source works again once the service is back


def test_azurite_default_credential_through_managed_identity(clean_env, azurite_oauth, tmp_path):
    from services import upload_tree

    container = azurite_oauth.new_container("mi")
    with azurite_oauth.service_client() as client:
        upload_tree(client, container, _tree(tmp_path / "up", SITE_FILES))
    before = azurite_oauth.tokens_issued
    with azurite_oauth.identity_environment():
        source = open_source(f"az://{container}", cloud=cloud(account_url=azurite_oauth.account_url))
        assert source.how.startswith("DefaultAzureCredential (")
        assert _listed(source) == set(SITE_FILES)
        buffer = bytearray(64 * 1024)
        assert source.hash_file("OMOP/person.csv", buffer).size == len(SITE_FILES["OMOP/person.csv"])
    assert azurite_oauth.tokens_issued > before


def test_run_over_azure_s3_and_mixed_sites(clean_env, azurite, az_site, moto_s3, tmp_path):
    from conftest import current_rows, settings
    from services import upload_tree, upload_tree_s3

    from chorus_batch import run

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))

    azure = run(settings(f"az://{az_site}", tmp_path / "az.sqlite", validate_site=False))
    assert set(current_rows(tmp_path / "az.sqlite")) == set(SITE_FILES) and azure.label

    bucket = moto_s3.new_bucket("site")
    upload_tree_s3(moto_s3.client(), bucket, _tree(tmp_path / "s3up", SITE_FILES), prefix="export")
    s3 = run(settings(f"s3://{bucket}/export", tmp_path / "s3.sqlite", validate_site=False, cloud=s3_cloud))
    assert set(current_rows(tmp_path / "s3.sqlite")) == set(SITE_FILES) and s3.label

    # mixed: a local site root, Images from Azure, Waveforms from S3 (each with its own file system)
    local = _tree(tmp_path / "local", {"OMOP/person.csv": b"person_id\n1\n"})
    images = azurite.new_container("img")
    with azurite.service_client() as client:
        upload_tree(client, images, _tree(tmp_path / "imgup", {"2/Images/2024/b.dcm": b"dicom-b"}), prefix="export")
    waves = moto_s3.new_bucket("wav")
    upload_tree_s3(moto_s3.client(), waves, _tree(tmp_path / "wavup", {"2/Waveforms/s2/r.dat": b"dat"}))
    mixed = run(settings(local, tmp_path / "mixed.sqlite", validate_site=False, cloud=s3_cloud,
                         roots={"Images": f"az://{images}/export", "Waveforms": f"s3://{waves}"}))
    assert set(current_rows(tmp_path / "mixed.sqlite")) == {"OMOP/person.csv", "2/Images/2024/b.dcm",
                                                            "2/Waveforms/s2/r.dat"}
    assert mixed.label


def _s3_site(clean_env, moto_s3, tmp_path, name: str):
    """SITE_FILES under export/ of a new moto bucket: (bucket, manifest path, run(url) of that manifest)."""
    from conftest import settings
    from services import upload_tree_s3

    from chorus_batch import run

    for key, value in moto_s3.env.items():
        clean_env.setenv(key, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    bucket = moto_s3.new_bucket(name)
    upload_tree_s3(moto_s3.client(), bucket, _tree(tmp_path / "up", SITE_FILES), prefix="export")
    db = tmp_path / "s3.sqlite"
    return bucket, db, lambda url: run(settings(url, db, validate_site=False, cloud=s3_cloud))


def test_a_cloud_root_given_with_an_uppercase_scheme_is_the_same_root(clean_env, moto_s3, tmp_path):
    """S3://bucket/site (a scheme is case-insensitive, and the root's checks took it) failed with 'cannot reach
    S3://...: ParamValidationError' (fsspec read the bucket as 'S3:'): it is the root s3://bucket/site, its files
    unchanged."""
    from conftest import query

    bucket, db, run_at = _s3_site(clean_env, moto_s3, tmp_path, "case")
    first = run_at(f"s3://{bucket}/export")
    assert first.label and first.counts["added"] == len(SITE_FILES)
    again = run_at(f"S3://{bucket}/export")
    assert again.label is None and again.counts["unchanged"] == len(SITE_FILES)
    assert query(db, "SELECT location FROM roots") == [(f"s3://{bucket}/export",)]


@pytest.mark.parametrize("store", ["azure", "s3"])
def test_a_cloud_root_whose_files_are_all_gone_is_refused_as_an_empty_root(clean_env, azurite, moto_s3, tmp_path, store):
    # An object store has no empty folder: a prefix whose objects were all deleted was "site root not found", exit 3,
    # where README says a root that lists no files though the previous version had files there is refused, exit 5
    # (and --max-delete all passes it). A prefix that never held files stays "not found".
    from conftest import current_rows, settings
    from services import upload_tree, upload_tree_s3

    from chorus_batch import run
    from chorus_batch.errors import ExitCode

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    tree = _tree(tmp_path / "up", SITE_FILES)
    if store == "azure":
        top = azurite.new_container("gone")
        with azurite.service_client() as client:
            upload_tree(client, top, tree, prefix="export")
        url = f"az://{top}/export"

        def empty() -> None:
            with azurite.service_client() as client:
                box = client.get_container_client(top)
                for blob in list(box.list_blobs()):
                    box.delete_blob(blob.name)
    else:
        top = moto_s3.new_bucket("gone")
        upload_tree_s3(moto_s3.client(), top, tree, prefix="export")
        url = f"s3://{top}/export"

        def empty() -> None:
            client = moto_s3.client()
            for item in client.list_objects_v2(Bucket=top).get("Contents", []):
                client.delete_object(Bucket=top, Key=item["Key"])
    db = tmp_path / "m.sqlite"
    assert run(settings(url, db, validate_site=False, cloud=s3_cloud)).label
    empty()
    with pytest.raises(ChorusError) as caught:
        run(settings(url, db, validate_site=False, cloud=s3_cloud))
    assert caught.value.exit_code == ExitCode.REFUSED, caught.value
    assert "no files at all, though the previous version had files there" in str(caught.value)
    with pytest.raises(ChorusError) as appended:  # (append mode ended "no changes", exit 0)
        run(settings(url, db, validate_site=False, cloud=s3_cloud, mode="append"))
    assert appended.value.exit_code == ExitCode.REFUSED, appended.value
    assert run(settings(url, db, validate_site=False, cloud=s3_cloud, max_delete="all")).label
    assert current_rows(db) == {}
    with pytest.raises(SourceError) as never:  # a prefix that never held files: a mistyped one
        run(settings(url + "x", tmp_path / "new.sqlite", validate_site=False, cloud=s3_cloud))
    assert "not found" in str(never.value)


def test_object_names_with_an_empty_dot_or_dotdot_part_are_not_tracked_and_are_said(clean_env, azurite, moto_s3, tmp_path):
    # 'site//OMOP/x.csv' was tracked as '/OMOP/x.csv', 'a/../b' as it is: names no copy of the site can hold (a
    # local one has another file there, or none), which upload then refused for ever as bad_name.
    from conftest import current_rows, settings

    from chorus_batch import run

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    odd = ["/OMOP/x.csv", "1/Images//a.dcm", "1/Images/./b.dcm", "1/Images/../c.dcm"]
    bucket = moto_s3.new_bucket("odd")
    client = moto_s3.client()
    for key in ["OMOP/person.csv", *odd]:
        client.put_object(Bucket=bucket, Key=f"site/{key}", Body=b"abc")
    container = azurite.new_container("odd")
    with azurite.service_client() as service:
        box = service.get_container_client(container)
        for name in ["OMOP/person.csv", "/OMOP/x.csv", "1/Images//a.dcm"]:
            box.upload_blob(f"site/{name}", b"abc")
    for url, names in ((f"s3://{bucket}/site", odd), (f"az://{container}/site", odd[:2])):
        db = tmp_path / f"{url[:2]}.sqlite"
        result = run(settings(url, db, validate_site=False, cloud=s3_cloud))
        assert set(current_rows(db)) == {"OMOP/person.csv"}, url
        said = {row["srcfile"]: row["message"] for row in result.errors.to_dicts() if row["kind"] == "special_file"}
        assert set(said) == set(names) and all("empty part ('//')" in m for m in said.values()), said



def test_an_object_named_like_the_root_itself_is_said_and_its_empty_markers_are_not(clean_env, azurite, moto_s3, tmp_path):
    # s3://b/site and an object `site` (no '/') beside `site/...`: the listing of `site/` does not hold it, and it was
    # silently untracked, bytes and all. Empty (a folder marker, as `site/` is) it is left out unsaid.
    from conftest import current_rows, settings

    from chorus_batch import run

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    client = moto_s3.client()
    full, empty = moto_s3.new_bucket("root"), moto_s3.new_bucket("mark")
    for bucket, body in ((full, b"data!"), (empty, b"")):
        for key, data in (("site", body), ("site/", b""), ("site/OMOP/person.csv", b"abc"), ("site-b/x.csv", b"zz")):
            client.put_object(Bucket=bucket, Key=key, Body=data)
    containers = azurite.new_container("root"), azurite.new_container("mark")
    with azurite.service_client() as service:
        for container, body in zip(containers, (b"data!", b"")):
            box = service.get_container_client(container)
            for name, data in (("site", body), ("site/OMOP/person.csv", b"abc"), ("site-b/x.csv", b"zz")):
                box.upload_blob(name, data)
    urls = [(f"s3://{full}/site", 5), (f"s3://{empty}/site", 0), (f"az://{containers[0]}/site", 5),
            (f"az://{containers[1]}/site", 0)]
    for n, (url, size) in enumerate(urls):
        db = tmp_path / f"{n}.sqlite"
        result = run(settings(url, db, validate_site=False, cloud=s3_cloud))
        assert set(current_rows(db)) == {"OMOP/person.csv"}, url
        said = {row["srcfile"]: row["message"] for row in result.errors.to_dicts()}
        if size:
            assert set(said) == {"../site"} and f"named like the root itself, {url} (no '/' after it), holds 5 bytes" \
                in said["../site"], said
        else:
            assert not said, said


def test_a_root_that_is_a_single_object_with_nothing_under_it_is_named_and_a_usage_error(clean_env, azurite, moto_s3,
                                                                                          tmp_path, capsys):
    """`site` of s3://b/site uploaded as one file (a zip), nothing under `site/`: the run failed, exit 3, "a single
    object, not a folder" with neither its size nor what to do. A root that is a file is bad usage, exit 2, as a local
    --site that is a file is; the message names the object, its bytes, the folder holding it and what to do."""
    from chorus_batch.cli import main

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    zipped = b"PK\x03\x04 a site, zipped"
    bucket = moto_s3.new_bucket("lone")
    moto_s3.client().put_object(Bucket=bucket, Key="site", Body=zipped)
    container = azurite.new_container("lone")
    with azurite.service_client() as service:
        service.get_container_client(container).upload_blob("site", zipped)
    (tmp_path / "site").write_bytes(zipped)
    codes = {}
    for url, above, kind in ((f"s3://{bucket}/site", f"s3://{bucket}", "object"),
                             (f"az://{container}/site", f"az://{container}", "blob"), (str(tmp_path / "site"), "", "")):
        capsys.readouterr()
        codes[url] = main(["run", "--site", url, "--db", str(tmp_path / "m.sqlite"), "--no-validate"])
        err = capsys.readouterr().err
        assert not (tmp_path / "m.sqlite").exists()
        if kind:
            assert f"site root is a single {kind}, not a folder: {url} is a file of {len(zipped)} bytes, and nothing " \
                   f"is under {url}/" in err, err
            assert f"(the folder holding this {kind} is {above})" in err and f"put its files under {url}/" in err, err
            assert "not found" not in err, err
    assert set(codes.values()) == {2}, codes

    # A [site.roots] root says its own words, and so does its check alone
    with pytest.raises(ConfigError) as caught:
        open_source(f"s3://{bucket}/site", cloud=CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url)),
                    what="[site.roots] Waveforms").check()
    assert caught.value.exit_code == 2 and "root of [site.roots] Waveforms is a single object" in str(caught.value)


@pytest.mark.parametrize("when", ["before the listing", "between listing and hashing"])
def test_a_root_that_turns_into_a_single_object_during_a_run_fails_it_as_changed_not_as_a_usage_error(
        clean_env, moto_s3, tmp_path, monkeypatch, when):
    """The prefix's objects deleted and one object named exactly like the prefix written while the run went on (its
    root checked, its `runs` row written): before the listing it was "site root is a single object", exit 2, a usage
    error of a --site that had been right; between listing and hashing each file was `vanished` and a version committed
    (exit 1) of a site that was gone. A root changed during the run: exit 3, recorded in `runs`, nothing committed."""
    from conftest import current_rows, query

    from chorus_batch.errors import ExitCode

    bucket, db, run_at = _s3_site(clean_env, moto_s3, tmp_path, "turn")
    url = f"s3://{bucket}/export"
    assert run_at(url).label
    before = current_rows(db)
    client = moto_s3.client()

    def swap() -> None:
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
        client.put_object(Bucket=bucket, Key="export", Body=b"PK\x03\x04")

    if when == "before the listing":
        listing = FsspecSource.list_files

        def list_files(self, errors):
            swap()
            return listing(self, errors)
        monkeypatch.setattr(FsspecSource, "list_files", list_files)
    else:
        hashing, swapped = FsspecSource.hash_file, []

        def hash_file(self, *args, **kwargs):
            if not swapped:
                swapped.append(swap())
            return hashing(self, *args, **kwargs)
        monkeypatch.setattr(FsspecSource, "hash_file", hash_file)
    from chorus_batch import run
    from conftest import settings

    with pytest.raises(SourceError) as caught:
        run(settings(url, db, validate_site=False, rehash=when != "before the listing",
                     cloud=CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))))
    said = str(caught.value)
    assert caught.value.exit_code == ExitCode.FAILED, said
    assert f"the site root {url} is now a single object, not a folder: {url} is a file of 4 bytes" in said, said
    assert "changed while this run listed and hashed it" in said and "previous version stays" in said, said
    assert current_rows(db) == before
    assert query(db, "SELECT COUNT(*) FROM versions") == [(1,)]
    (recorded,) = query(db, "SELECT exit_code, message FROM runs ORDER BY rowid DESC LIMIT 1")
    assert recorded[0] == ExitCode.FAILED and "changed while this run" in recorded[1], recorded


def test_a_run_asks_once_whether_its_cloud_root_is_there(clean_env, moto_s3, tmp_path):
    # The run checked its roots before its `runs` row and the scan checked them again: the same listing of one key
    # sent twice at every start.
    bucket = moto_s3.new_bucket("once")
    moto_s3.client().put_object(Bucket=bucket, Key="export/OMOP/person.csv", Body=b"person_id\n1\n")
    (tmp_path / "chorus.toml").write_text(f'[s3]\nendpoint_url = "{moto_s3.endpoint_url}"\n')
    seen = moto_s3.log.stat().st_size
    out = cli("run", "--site", f"s3://{bucket}/export", "--db", str(tmp_path / "m.sqlite"), "--no-validate",
              cwd=tmp_path, env=moto_s3.env)
    assert out.returncode == 0, out.stdout + out.stderr
    requests = moto_s3.log.read_bytes()[seen:].decode(errors="replace")
    assert requests.count(f"GET /{bucket}?list-type=2&max-keys=1&prefix=export/") == 1, requests


def test_odd_names_an_earlier_release_tracked_are_removed_saying_why_and_not_counted_against_max_delete(
        clean_env, moto_s3, monkeypatch, tmp_path):
    # A manifest an earlier release wrote tracked 'a/./b' and 'a//b': the next run left them out and recorded them as
    # removed, said only "not tracked; rename the object"; and where they were many, --max-delete refused the run
    # with "check that the site is mounted", which it is.
    from conftest import current_rows, query, settings

    from chorus_batch import run
    from chorus_batch.errors import MassRemovalRefused
    from chorus_batch.sources import remote

    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    odd = ["1/Images//a.dcm", "1/Images/./b.dcm", "1/Images/../c.dcm"]
    bucket = moto_s3.new_bucket("was")
    client = moto_s3.client()
    for key in ["OMOP/person.csv", *odd]:
        client.put_object(Bucket=bucket, Key=f"site/{key}", Body=key.encode())
    db = tmp_path / "m.sqlite"
    with monkeypatch.context() as earlier:  # (the release before: names taken as they were)
        earlier.setattr(remote, "_pathless_left_out", lambda found, errors: found)
        run(settings(f"s3://{bucket}/site", db, validate_site=False, cloud=cloud, version_label="20261101020000"))
    assert set(current_rows(db)) == {"OMOP/person.csv", *odd}
    result = run(settings(f"s3://{bucket}/site", db, validate_site=False, cloud=cloud, max_delete="1",
                          version_label="20261102020000"))  # 3 of 4 files removed: 75%, past any limit but `all`
    assert set(current_rows(db)) == {"OMOP/person.csv"}
    said = {row["srcfile"]: row["message"] for row in result.errors.to_dicts() if row["kind"] == "special_file"}
    assert set(said) == set(odd), said
    assert all("recorded as removed" in m and "--max-delete" in m for m in said.values()), said
    assert query(db, "SELECT count(*) FROM changes WHERE version = '20261102020000' AND change = 'removed'") == [(3,)]
    # a file really gone still counts
    client.delete_object(Bucket=bucket, Key="site/OMOP/person.csv")
    client.put_object(Bucket=bucket, Key="site/OMOP/other.csv", Body=b"x")
    with pytest.raises(MassRemovalRefused):
        run(settings(f"s3://{bucket}/site", db, validate_site=False, cloud=cloud, max_delete="0"))


def test_folder_marker_objects_are_not_files(clean_env, azurite, moto_s3, tmp_path):
    """Zero-byte keys ending in '/' (S3 console "Create folder", Azure Storage Explorer) are folder
    markers: neither listed as files nor recorded, on S3 as on Azure."""
    from services import upload_tree, upload_tree_s3

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    markers = ("export/", "export/OMOP/", "export/1/Images/empty/")
    bucket = moto_s3.new_bucket("mark")
    client = moto_s3.client()
    upload_tree_s3(client, bucket, _tree(tmp_path / "s3up", SITE_FILES), prefix="export")
    container = azurite.new_container("mark")
    with azurite.service_client() as service:
        upload_tree(service, container, _tree(tmp_path / "azup", SITE_FILES), prefix="export")
        for key in markers:
            client.put_object(Bucket=bucket, Key=key, Body=b"")
            service.get_blob_client(container, key).upload_blob(b"", overwrite=True)
    for url, cloud_settings in ((f"s3://{bucket}/export", s3_cloud), (f"az://{container}/export", None)):
        assert _listed(open_source(url, cloud=cloud_settings)) == set(SITE_FILES), url
        assert _listed(open_source(url + "/", cloud=cloud_settings)) == set(SITE_FILES), url


def test_the_roots_own_folder_marker_with_bytes_is_named_not_listed_by_an_empty_name(clean_env, azurite, moto_s3,
                                                                                      tmp_path):
    """The root's own marker (`export/` under s3://b/export) holding bytes was reported as "    : a folder marker
    (...) that holds 17 bytes" with an empty path in the summary and scan_errors: nothing said which object. Now './',
    naming the marker by its URL, on S3 as on Azure."""
    from conftest import query, run_site
    from services import upload_tree, upload_tree_s3

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    local = _tree(tmp_path / "site", SITE_FILES)
    bucket, container = moto_s3.new_bucket("rootmark"), azurite.new_container("rootmark")
    upload_tree_s3(moto_s3.client(), bucket, local, prefix="export")
    moto_s3.client().put_object(Bucket=bucket, Key="export/", Body=b"root marker bytes")
    with azurite.service_client() as service:
        upload_tree(service, container, local, prefix="export")
        service.get_container_client(container).upload_blob("export/", b"root marker bytes", overwrite=True)
    for url, db in ((f"s3://{bucket}/export", tmp_path / "s3.sqlite"), (f"az://{container}/export", tmp_path / "az.sqlite")):
        result = run_site(url, db, validate_site=False)
        assert result.label, url
        (path, message), = query(db, "SELECT srcfile, message FROM scan_errors WHERE kind = 'special_file'")
        assert path == "./" and f"the root's own folder marker ({url}/," in message and "17 bytes" in message, message


def test_folder_blobs_and_markers_with_bytes_give_the_manifest_of_a_local_copy(clean_env, azurite, moto_s3, tmp_path):
    """A folder made by azcopy, Storage Explorer or the ADLS Gen2 API is a zero-byte blob named like the folder
    (no '/') with metadata hdi_isfolder=true: not a file (it was recorded as an empty file). A folder marker that
    holds bytes is not tracked either (no copy of the site could hold it) but is reported, never dropped unsaid."""
    from conftest import query, run_site
    from services import upload_tree, upload_tree_s3

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    local = _tree(tmp_path / "site", {**SITE_FILES, "1/Waveforms/s1/empty.dat": b""})
    bucket, container = moto_s3.new_bucket("dirs"), azurite.new_container("dirs")
    client = moto_s3.client()
    upload_tree_s3(client, bucket, local, prefix="export")
    client.put_object(Bucket=bucket, Key="export/1/Images/", Body=b"bytes under a folder's name")
    with azurite.service_client() as service:
        upload_tree(service, container, local, prefix="export")
        blobs = service.get_container_client(container)
        for folder, key in (("export", "hdi_isfolder"), ("export/OMOP", "hdi_isfolder"), ("export/1", "Hdi_isfolder"),
                            ("export/1/Images", "is_directory")):
            blobs.upload_blob(folder, b"", overwrite=True, metadata={key: "true"})
        blobs.upload_blob("export/1/Images/", b"bytes under a folder's name", overwrite=True)
    listing = "SELECT srcfile, size, md5 FROM source_files WHERE time_invalid IS NULL ORDER BY srcfile"
    run_site(local, tmp_path / "local.sqlite", validate_site=False)
    for url, db in ((f"az://{container}/export", tmp_path / "az.sqlite"), (f"s3://{bucket}/export", tmp_path / "s3.sqlite")):
        run_site(url, db, validate_site=False)
        assert query(db, listing) == query(tmp_path / "local.sqlite", listing), url
        errors = "SELECT srcfile, kind FROM scan_errors ORDER BY srcfile"
        assert set(query(db, errors)) - set(query(tmp_path / "local.sqlite", errors)) == {("1/Images/", "special_file")}
        assert "holds 27 bytes" in query(db, "SELECT message FROM scan_errors WHERE kind = 'special_file'")[0][0]


def test_a_root_naming_one_file_says_so(clean_env, azurite, az_site, moto_s3, tmp_path):
    """--site pointing at a blob or object (a file) is not "not found": the message says it is a file."""
    from services import upload_tree_s3

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    bucket = moto_s3.new_bucket("one")
    upload_tree_s3(moto_s3.client(), bucket, _tree(tmp_path / "s3up", SITE_FILES), prefix="export")
    for url, cloud_settings in ((f"s3://{bucket}/export/OMOP/person.csv", s3_cloud),
                                (f"az://{az_site}/OMOP/person.csv", None)):
        with pytest.raises(ConfigError) as caught:  # a file, not a folder: bad usage, exit 2, as a local --site file
            open_source(url, cloud=cloud_settings).check()
        assert "is a single" in str(caught.value) and "not a folder" in str(caught.value), url
    with pytest.raises(SourceError) as caught:  # a prefix that is not there at all is still "not found"
        open_source(f"az://{az_site}/nope", cloud=None).check()
    assert "site root not found" in str(caught.value)


def test_an_empty_folder_made_by_a_folder_blob_is_there_as_an_empty_local_folder(clean_env, azurite, moto_s3,
                                                                                  tmp_path):
    """An empty folder that ADLS Gen2, azcopy or Storage Explorer made is one blob named like it, hdi_isfolder=true:
    --site at it was "site root not found" (exit 3, no folder named), while S3's `site/` marker and an empty local
    folder are a site that lists no files. A blob of that name without the metadata is a file, not a folder."""
    from conftest import run_site

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    container, bucket = azurite.new_container("empty"), moto_s3.new_bucket("empty")
    with azurite.service_client() as service:
        blobs = service.get_container_client(container)
        blobs.upload_blob("export", b"", metadata={"hdi_isfolder": "true"})
        blobs.upload_blob("export/sub", b"", metadata={"hdi_isfolder": "true"})
        blobs.upload_blob("export/file", b"")  # no metadata: a file, and no folder of that name
        blobs.upload_blob("export/subnot/x.txt", b"x")  # 'export/sub' lists before this but is not its folder
    moto_s3.client().put_object(Bucket=bucket, Key="export/sub/", Body=b"")
    (tmp_path / "local" / "export" / "sub").mkdir(parents=True)
    outcomes = {}
    for url in (str(tmp_path / "local" / "export" / "sub"), f"az://{container}/export/sub", f"s3://{bucket}/export/sub"):
        result = run_site(url, tmp_path / f"{len(outcomes)}.sqlite", validate_site=False)
        outcomes[url.split(":")[0] if "://" in url else "local"] = (result.label, result.exit_code)
    assert set(outcomes.values()) == {(None, 0)}, outcomes
    with pytest.raises(ConfigError) as caught:
        open_source(f"az://{container}/export/file", cloud=None).check()
    assert "is a single blob" in str(caught.value)


def test_s3_missing_bucket_and_bad_credentials(clean_env, moto_s3):
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    with pytest.raises(SourceError) as caught:
        open_source("s3://no-such-bucket/site", cloud=s3_cloud).check()
    assert caught.value.kind in ("missing",) and "bucket" in caught.value.what  # type: ignore[attr-defined]
    assert f"at {moto_s3.endpoint_url} ([s3] endpoint_url)" in caught.value.what


def test_a_root_given_with_percent_escapes_names_the_prefix_that_is_there(clean_env, moto_s3, azurite, tmp_path):
    """Every character of an s3:// or az:// URL is part of the name (README), so s3://b/my%20site is not 'my site':
    it was "site root not found … point --site at the prefix that holds OMOP/", though 'my site' was right there."""
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    bucket, container = moto_s3.new_bucket("esc"), azurite.new_container("esc")
    moto_s3.client().put_object(Bucket=bucket, Key="my site/OMOP/person.csv", Body=b"person_id\n1\n")
    with azurite.service_client() as client:
        client.get_blob_client(container, "my site/OMOP/person.csv").upload_blob(b"person_id\n1\n")
    for given in (f"s3://{bucket}/my%20site", f"az://{container}/my%20site"):
        out = cli("run", "--site", given, "--db", str(tmp_path / "m.sqlite"), "--no-validate")
        assert out.returncode == 3 and f"site root not found: {given}" in out.stderr, out.stderr
        decoded = given.replace("%20", " ")
        assert f"{decoded}, the prefix with its %-escapes decoded, is there" in out.stderr, out.stderr
        assert f"in {given.split(':')[0]}:// URLs every character is part of the name" in out.stderr, out.stderr
        assert cli("run", "--site", decoded, "--db", str(tmp_path / "m.sqlite"), "--no-validate").returncode == 0
        (tmp_path / "m.sqlite").unlink()
    # an escape that names nothing either way is "not found", as before
    out = cli("run", "--site", f"s3://{bucket}/no%20such", "--db", str(tmp_path / "m.sqlite"), "--no-validate")
    assert out.returncode == 3 and "decoded" not in out.stderr and "point --site" in out.stderr, out.stderr


def test_a_root_not_found_names_the_folder_it_differs_from_or_what_is_there(clean_env, moto_s3, azurite, tmp_path):
    """Blob and key names are matched exactly: az://c/Site Export for 'site export/' (letter case, a space doubled, the
    other Unicode form of an accent, as typed from a note) was a bare "site root not found … point --site at the
    prefix that holds OMOP/": the message now names the folder that is there and the root that reads it, or, with no
    such folder, the folders at the deepest level of the URL's path that is there. A name in the other Unicode form
    is shown escaped ('donne\\u0301es'), with the bash $'...' spelling of the root that reads it."""
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    clean_env.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    bucket, container = moto_s3.new_bucket("near"), azurite.new_container("near")
    keys = ("site export/données/OMOP/person.csv", "site export/données/1/Images/CT/a.dcm", "other/x.txt")
    for key in keys:
        moto_s3.client().put_object(Bucket=bucket, Key=key, Body=b"person_id\n1\n")
    with azurite.service_client() as client:
        for key in keys:
            client.get_blob_client(container, key).upload_blob(b"person_id\n1\n")
    nfd = "donne\u0301es"  # the decomposed form (macOS), 'é' as 'e' + a combining accent
    for top in (f"s3://{bucket}/", f"az://{container}/"):
        out = cli("run", "--site", f"{top}Site  Export/{nfd}", "--db", str(tmp_path / "m.sqlite"), "--no-validate")
        assert out.returncode == 3 and f"site root not found: {top}Site  Export/{nfd}" in out.stderr, out.stderr
        # (the other Unicode form is shown escaped: "'données', not 'données'" read as the same name twice; and how to
        # type the form that is there, which a keyboard does not write)
        assert ("the folders are 'site export', not 'Site  Export'; 'donn\\xe9es', not 'donne\\u0301es', the same "
                "letters in another Unicode form" in out.stderr
                and f"give {top}site export/données (in bash: $'{top}site export/donn\\u00e9es', which writes it in that "
                "form)" in out.stderr), out.stderr
        done = cli("run", "--site", f"{top}site export/données", "--db", str(tmp_path / "m.sqlite"), "--no-validate")
        assert done.returncode in (0, 1) and "committed" in done.stdout + done.stderr, done.stderr
        (tmp_path / "m.sqlite").unlink()
        out = cli("run", "--site", f"{top}site export/nope", "--db", str(tmp_path / "m.sqlite"), "--no-validate")
        assert out.returncode == 3 and f"; {top}site export/ holds 'données/'" in out.stderr, out.stderr
        out = cli("run", "--site", f"{top}export", "--db", str(tmp_path / "m.sqlite"), "--no-validate")
        assert out.returncode == 3 and f"; {top} holds 'other/', 'site export/'" in out.stderr, out.stderr
        assert not (tmp_path / "m.sqlite").exists()


@pytest.mark.parametrize("page", [None, b"<html><body>MinIO Console</body></html>"])
def test_an_endpoint_that_is_no_s3_service_is_said_to_be_one_not_a_missing_bucket(clean_env, moto_s3, tmp_path, page):
    """AWS_ENDPOINT_URL at a web server (MinIO's console port, a proxy's page): a 404 was "the bucket site1 does not
    exist", a page answered with 200 an empty bucket ("site root not found", or, after a version, a root whose files are
    all gone: refused, exit 5). Now exit 3 saying the endpoint is no S3 service; the real service still says what it
    said (a missing bucket, a missing prefix, an empty bucket)."""
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    if page is not None:
        (served / "site1").write_bytes(page)  # GET /site1?list-type=2&… answers 200 with the page
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        try:
            out = cli("run", "--site", "s3://site1/export", "--db", str(tmp_path / "m.sqlite"), "--no-validate",
                      env={**moto_s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{web.server_address[1]}",
                           "CHORUS_BATCH_RETRY_DEADLINE_S": "2"})
        finally:
            web.shutdown()
    assert out.returncode == 3, out.stderr
    assert "the endpoint does not answer as an S3 service" in out.stderr and "fix:   check [s3] endpoint_url" in out.stderr
    assert "does not exist" not in out.stderr and "not found" not in out.stderr and not (tmp_path / "m.sqlite").exists()
    # the real service: a missing bucket, a missing prefix and an empty bucket are what they were
    for name, value in moto_s3.env.items():
        clean_env.setenv(name, value)
    s3_cloud = CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    empty = moto_s3.new_bucket("empty")
    for url, kind in (("s3://no-such-bucket/site", "missing"), (f"s3://{empty}/site", "empty_prefix")):
        with pytest.raises(SourceError) as caught:
            open_source(url, cloud=s3_cloud).check()
        assert caught.value.kind == kind, caught.value  # type: ignore[attr-defined]
    open_source(f"s3://{empty}", cloud=s3_cloud).check()  # a bucket that is there, empty: listed (no files)


# ----------------------------------------------------------------------------- locations checked before anything opens

from chorus_batch.urls import mask_url  # noqa: E402


@pytest.mark.parametrize(("url", "hidden"), [
    ("s3://b1/?X-Amz-Credential=AKIAEXAMPLE%2F20261203&X-Amz-Signature=fe5f80f7&X-Amz-Security-Token=FQoGZX",
     ("AKIAEXAMPLE", "fe5f80f7", "FQoGZX")),
    ("az://cnt/site?sv=2024&sig=SASSIG&newparam=NEWSECRET", ("SASSIG", "NEWSECRET")),
    ("https://user:pw@host/x?token=T0KEN", ("pw", "T0KEN")),
    # a password holding '@' showed what followed it; one holding '/' (AWS secret keys do) was not masked at all
    ("https://user:PA55@W0RD@host/x", ("PA55", "W0RD")),
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@bucket/site", ("AKIAEXAMPLE", "wJalrXUtnFEMI", "K7MDENG")),
    ("https://ghp_T0KEN@host/x", ("ghp_T0KEN",)),
    # a query without '=': a SAS %-escaped whole (copied from an escaped link or a config) was shown in full
    ("az://cnt/site?se%3D2030-01-01%26sp%3Drl%26sv%3D2024%26sr%3Dc%26sig%3DSASSIG%252BX", ("SASSIG",)),
    ("s3://b1/x?X-Amz-Credential%3DAKIAEXAMPLE%26X-Amz-Signature%3Dfe5f80f7", ("AKIAEXAMPLE", "fe5f80f7")),
    ("https://host/x?T0KEN&a=1", ("T0KEN",)),
])
def test_every_query_value_and_password_of_a_url_is_masked(url, hidden):
    masked = mask_url(url)
    assert not any(secret in masked for secret in hidden), masked
    assert masked.split("://")[0] == url.split("://")[0] and "***" in masked
    # a container named abfs-style stays readable
    assert mask_url("abfs://site@acct.dfs.core.windows.net/x") == "abfs://site@acct.dfs.core.windows.net/x"


@pytest.mark.parametrize(("args", "said"), [
    (["--site", "gs://bucket/site"], "does not read gs:// locations"),
    (["--site", "ftp://host/site"], "does not read ftp:// locations"),
    (["--site", "x://"], "does not read x:// locations"),
    (["--site", "az://"], "names no container"),
    (["--site", "az:///site"], "names no container"),
    (["--site", "s3://"], "names no bucket"),
    (["--site", "az://Bad_Name/site"], "not a valid Azure container name"),
    # 2 letters: Azure's minimum is 3; with the storage unreachable this was 'cannot reach', exit 3, for a typo
    (["--site", "az://ab/site"], "'ab' is not a valid Azure container name"),
    (["--db", "az://m/m.sqlite"], "'m' is not a valid Azure container name"),
    (["--site", "az://site1/x?sv=2024&sig=SECRETSIG"], "credentials in the URL"),
    (["--site", "s3://b1/?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIAEXAMPLE"], "credentials in the URL"),
    (["--site", "s3://AKIAEXAMPLE:SECRETSIG@b1/site"], "credentials in the URL"),
    # a secret key with '/' was not seen as one: "'AKIAEXAMPLE:SECRETSIG' is not a valid S3 bucket name"
    (["--site", "s3://AKIAEXAMPLE:SECRETSIG/x@b1/site"], "credentials in the URL"),
    (["--site", "https://user:SECRETSIG@x@acct.blob.core.windows.net/site1/x"], "not as an http(s):// URL"),
    (["--site", "file://AKIAEXAMPLE:SECRETSIG@localhost/tmp"], "a file URL with a user or password is not read"),
    # A '?' in a folder's name was told as credentials in the URL; '//', '.' and '..' were accepted and read oddly;
    # an https:// account URL (with or without a SAS) got no hint of the az:// root and setting that say the same.
    (["--site", "az://site1/site?x/"], "'?' starts a query in a URL, and a root URL takes none"),
    # a container name with capitals (typed from a note): the valid name said
    (["--site", "az://Site-1/Export"], "Azure container names are lowercase, so give az://site-1/Export"),
    (["--site", "abfs://site1@acct.dfs.core.windows.net/a?b"], "'?' starts a query"),
    (["--site", "s3://b1/a?b/"], "'?' starts a query"),
    # a SAS %-escaped whole has no '=' in its query: the message quoted it, signature and all
    (["--site", "az://site1/x?sv%3D2024%26sr%3Dc%26sig%3DSECRETSIG%252B"], "'?' starts a query"),
    (["--site", "s3://b1/x?X-Amz-Credential%3DAKIAEXAMPLE%26X-Amz-Signature%3DSECRETSIG"], "'?' starts a query"),
    (["--site", "az://site1/site#x"], "'#' starts a fragment"),
    (["--site", "az://site1//site"], "az://site1//site has an empty folder name ('//')"),
    (["--site", "abfss://site1/a//b/"], "has an empty folder name"),
    (["--site", "s3://b1//site"], "has an empty folder name"),
    (["--site", "az://site1/./site"], "has a '.' folder"),
    (["--site", "s3://b1/a/../site"], "has a '..' folder"),
    (["--site", "https://acct.blob.core.windows.net/site1/x"],
     'give az://site1/x and set [azure] account_url = "https://acct.blob.core.windows.net"'),
    (["--site", "https://acct.blob.core.windows.net/site1/x?sv=2024&sig=SECRETSIG"],
     "goes into AZURE_STORAGE_SAS_TOKEN, never into a URL"),
    # the portal's URL is %-escaped: the az:// root given as the fix kept 'site%20one', a prefix then "not found"
    (["--site", "https://acct.blob.core.windows.net/site1/site%20one/%C3%A9t%C3%A9+1"],
     "give az://site1/site one/été+1 (quoted for the shell) and set [azure] account_url"),
    (["--site", "http://127.0.0.1:10000/devstoreaccount1/site1?sig=SECRETSIG"], "not as an http(s):// URL"),
    (["--db", "s3://bucket/m.sqlite"], "a manifest is kept in a local file or in Azure Blob"),
    (["--db", "gs://bucket/m.sqlite"], "a manifest is kept in a local file or in Azure Blob"),
    (["--db", "file:///tmp/m.sqlite"], "a manifest is kept in a local file or in Azure Blob"),
    (["--db", "az://manifests/m.sqlite?sv=2024&sig=SECRETSIG"], "credentials in the URL"),
    (["--db", "az://manifests//m.sqlite"], "has an empty folder name"),
    (["--parquet", "s3://bucket/snapshots"], "written to a local folder"),
])
def test_a_location_that_cannot_be_one_is_refused_up_front(clean_env, tmp_path, args, said):
    """Exit 2 with what, where and a fix, before anything is opened or created: never a traceback, an SDK's own
    words, a folder named 's3:' made here, or a secret repeated."""
    given = dict(zip(args[::2], args[1::2]))
    site = tmp_path / "site"  # beside the default manifest, not holding it (a manifest in the site is refused first)
    site.mkdir()
    argv = ["run", "--no-validate", "--site", given.get("--site", str(site)), "--db",
            given.get("--db", str(tmp_path / "m.sqlite"))] + (["--parquet", given["--parquet"]] if "--parquet" in given else [])
    work = tmp_path / "work"
    work.mkdir()
    out = cli(*argv, cwd=work)
    assert out.returncode == 2, out.stderr
    assert said in out.stderr and "fix:" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "SECRETSIG" not in out.stdout + out.stderr and "AKIAEXAMPLE" not in out.stdout + out.stderr
    assert list(work.iterdir()) == [] and not (tmp_path / "m.sqlite").exists()


def test_slurm_script_never_writes_credentials_from_a_url(clean_env, tmp_path):
    for args in (["--site", "az://site1/x?sv=2020&sig=SECRETSIG", "--db", str(tmp_path / "m.sqlite")],
                 ["--site", str(tmp_path), "--db", "az://manifests/m.sqlite?sv=1&sig=SECRETSIG", "--staging", str(tmp_path)]):
        out = cli("slurm-script", *args)
        assert out.returncode == 2 and "credentials in the URL" in out.stderr, out.stderr
        assert "SECRETSIG" not in out.stdout + out.stderr


def test_an_account_key_that_is_not_one_is_named(clean_env, tmp_path):
    out = cli("run", "--site", "az://site/x", "--db", str(tmp_path / "m.sqlite"),
              env={"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_KEY": "not a key!"})
    assert out.returncode == 2 and "AZURE_STORAGE_KEY is not an Azure account key" in out.stderr, out.stderr
    assert "not a key!" not in out.stderr


def test_s3_with_no_credentials_at_all_is_a_configuration_to_make(clean_env, tmp_path):
    """As for Azure with no account: exit 2 naming what is missing (the README's exit codes), not a failure (3)."""
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "",
           "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "", "AWS_DEFAULT_REGION": "us-east-1"}
    out = cli("run", "--site", "s3://bucket1/site", "--db", str(tmp_path / "m.sqlite"), env=env)
    assert out.returncode == 2 and "no AWS credentials are configured" in out.stderr and "fix:" in out.stderr, out.stderr


@pytest.mark.parametrize("given, says, fix", [
    # a profile in no file ([s3] profile or AWS_PROFILE mistyped, or the credentials file not where the job looks)
    ({"AWS_PROFILE": "chorsu"}, "the AWS profile 'chorsu' is in no AWS config or credentials file",
     "add the profile 'chorsu' to ~/.aws/config"),
    # a key id without its secret key (an env file with one line lost)
    ({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}, "the AWS credentials are incomplete: AWS_SECRET_ACCESS_KEY is missing",
     "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY together"),
])
def test_an_s3_sign_in_botocore_cannot_use_is_a_configuration_to_fix(clean_env, tmp_path, given, says, fix):
    """Both were exit 3 ("sign-in failed (ProfileNotFound: …)"), as if a service had refused them: nothing was asked
    of any service, the configuration is what to fix (exit 2, as for no credentials at all and for Azure's)."""
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true", "AWS_SECRET_ACCESS_KEY": "",
           "AWS_SESSION_TOKEN": "", "AWS_DEFAULT_REGION": "us-east-1", "CHORUS_BATCH_RETRY_DEADLINE_S": "1", **given}
    out = cli("run", "--site", "s3://bucket1/site", "--db", str(tmp_path / "m.sqlite"), env=env)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert f"fix:   {fix}" in out.stderr and "Traceback" not in out.stderr and not (tmp_path / "m.sqlite").exists()


@pytest.mark.parametrize("conn, said", [
    ("garbage;;=x", "is not a connection string"),
    ("AccountName=acct;AccountKey=not*base64!SECRETKEY", "AccountKey of the connection string in AZURE_STORAGE_CONNECTION_STRING "
                                                          "is not an Azure account key"),
    ("DefaultEndpointsProtocol=https;SECRETKEY=x", "names no account"),
    # an unset variable in a template (AccountKey=${KEY}): every request went unsigned, "sign-in failed", exit 3
    ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=;EndpointSuffix=core.windows.net",
     "has an empty AccountKey"),
    ("BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=", "has an empty SharedAccessSignature"),
    # a SharedAccessSignature with no signature: sent as given, "sign-in failed ... may be wrong or old", exit 3
    ("BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=SECRETKEY-no-sig",
     "is not a SAS token: it has no signature (sig=)"),
])
def test_a_connection_string_that_is_not_one_is_named_before_any_request(clean_env, tmp_path, conn, said):
    """The SDK refuses these with a bare ValueError (an internal error) or signs every request wrongly."""
    db = tmp_path / "m.sqlite"
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    assert cli("run", "--site", str(tmp_path / "site"), "--db", str(db), "--no-validate").returncode == 0
    for command in (["upload", "--to", "az://central/"], ["verify", "--to", "az://central/"], ["run", "--site", "az://site/x"]):
        out = cli(*command, "--db", str(db), env={"AZURE_STORAGE_CONNECTION_STRING": conn})
        assert out.returncode == 2 and said in out.stderr and "fix:" in out.stderr, out.stderr
        assert "internal error" not in out.stderr and "SECRETKEY" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("token, said", [
    # the portal's "Blob SAS URL" pasted whole instead of its "SAS token" field
    ("https://acct.blob.core.windows.net/site?sv=2022-11-02&sp=rl&se=2030-01-01T00:00:00Z&sig=SECRETSIG",
     "AZURE_STORAGE_SAS_TOKEN holds a URL (https://acct.blob.core.windows.net/site?sv=***"),
    # no signature at all (a variable filled with something else)
    ("SECRETSIG-not-a-token", "AZURE_STORAGE_SAS_TOKEN is not a SAS token: it has no signature (sig=)"),
])
def test_a_sas_token_that_is_not_one_is_named_before_any_request(clean_env, tmp_path, token, said):
    """Both were sent as given and refused by the service: "sign-in failed (AuthorizationFailure ...)", "the SAS token
    may have expired", exit 3 for a setting to fix. Now exit 2 before any request, the value masked."""
    db = tmp_path / "m.sqlite"
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    assert cli("run", "--site", str(tmp_path / "site"), "--db", str(db), "--no-validate").returncode == 0
    env = {"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_SAS_TOKEN": token, "CHORUS_BATCH_RETRY_DEADLINE_S": "1"}
    for command in (["upload", "--to", "az://central/"], ["verify", "--to", "az://central/"], ["run", "--site", "az://site/x"]):
        out = cli(*command, "--db", str(db), env=env)
        assert out.returncode == 2 and said in out.stderr and "fix:   set it to the SAS token alone" in out.stderr, out.stderr
        assert "SECRETSIG" not in out.stdout + out.stderr and "Traceback" not in out.stderr and "may have expired" not in out.stderr


def test_a_sas_whose_start_has_not_come_says_so_not_that_it_may_have_expired(clean_env, azurite, az_site, tmp_path):
    """A SAS token whose st= is later than now (a local time given as UTC, a clock ahead where it was made) was refused
    as "sign-in failed (AuthorizationFailure ...)" with "the SAS token may have expired (its se= date) or be for another
    account or container": neither. It now names its start and what to do; the same for a connection string's."""
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    now = datetime.datetime.now(datetime.UTC)
    sas = generate_container_sas(azurite.account_name, az_site, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 start=now + datetime.timedelta(hours=2), expiry=now + datetime.timedelta(hours=3))
    start = dict(part.split("=", 1) for part in sas.split("&"))["st"].replace("%3A", ":")
    config = tmp_path / "chorus.toml"
    config.write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    for env in ({"AZURE_STORAGE_SAS_TOKEN": sas},
                {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}"}):
        out = cli("run", "--config", str(config), "--site", f"az://{az_site}", "--db", str(tmp_path / "m.sqlite"),
                  "--no-validate", "-q", env={**env, "CHORUS_BATCH_RETRY_BASE_S": "0.01"})
        assert out.returncode == 3, out.stdout + out.stderr
        assert f"the SAS token is not valid before {start}" in out.stderr, out.stderr
        assert f"valid only from {start} (its st=)" in out.stderr and "may have expired" not in out.stderr, out.stderr
        assert "sig=" not in out.stderr and "Traceback" not in out.stderr
    # a start that has come is not named
    assert ", not valid before" not in azure_sign_in(
        cloud(account_name="myacct"), {"AZURE_STORAGE_SAS_TOKEN": "st=2020-01-01T00:00:00Z&" + SAS}).how


def test_a_sas_that_expires_in_the_middle_of_a_run_fails_it_cleanly(clean_env, azurite, tmp_path):
    """A SAS valid when the run starts and expired while it reads (Azurite checks the expiry): exit 3, nothing
    committed (the previous version stays), a message that names the expiry and the fix, no secret, no process left."""
    import datetime
    import os
    import subprocess
    import sys

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas
    from services import upload_tree

    from conftest import query

    container = azurite.new_container("sas")
    local = tmp_path / "up"
    write(local, "OMOP/person.csv", b"person_id\n1\n")
    for i in range(3):
        write(local, f"00000{i}/Waveforms/S{i}/S{i}.dat", bytes([i]) * 3000)
    with azurite.service_client() as client:
        upload_tree(client, container, local, content_md5=False)  # no stored MD5: every blob is downloaded
    (tmp_path / "chorus.toml").write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    db = tmp_path / "m.sqlite"
    lasting = generate_container_sas(azurite.account_name, container, account_key=azurite.account_key,
                                     permission=ContainerSasPermissions(read=True, list=True),
                                     expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    first = cli("run", "--site", f"az://{container}", "--db", str(db), "--no-validate", cwd=tmp_path,
                env={"AZURE_STORAGE_SAS_TOKEN": lasting})
    assert first.returncode in (0, 1), first.stderr
    changed = tmp_path / "changed"
    for i in range(3):
        write(changed, f"00000{i}/Waveforms/S{i}/S{i}.dat", bytes([i + 7]) * 3000)
    with azurite.service_client() as client:  # in blocks, without a stored MD5: the next run downloads them
        upload_tree(client, container, changed, content_md5=False, blocks=True)
    short = generate_container_sas(azurite.account_name, container, account_key=azurite.account_key,
                                   permission=ContainerSasPermissions(read=True, list=True),
                                   expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=10))
    expires = time.monotonic() + 10
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", f"az://{container}", "--db", str(db),
                             "--no-validate"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AZURE_STORAGE_SAS_TOKEN": short, "CHORUS_BATCH_RETRY_DEADLINE_S": "3",
                                 "CHORUS_BATCH_TEST_PAUSE": "hashing+30",  # listed in time, read after the expiry
                                 "CHORUS_BATCH_TEST_RESUME": str(tmp_path / "expired")})
    assert proc.stderr is not None
    said = []
    while "test pause at hashing" not in (line := proc.stderr.readline()):
        said.append(line)
        assert line, "the run ended before it reached the hashing: " + "".join(said)
    assert time.monotonic() < expires - 1, "the run listed too late to be read with an expired SAS"
    # Let it go on once the SAS has expired (se= is whole seconds, rounded down), not after a fixed pause.
    time.sleep(max(0.0, expires + 1 - time.monotonic()))
    (tmp_path / "expired").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out + err
    assert "Traceback" not in err and "internal error" not in err and short.split("sig=")[1][:10] not in out + err
    assert "nothing was committed" in err.lower() or "previous version" in err, err
    # It was "sign-in failed (AuthorizationFailure: ...)" and "may have expired": the token's own se= says it did.
    assert "the SAS token expired at " in err and "AZURE_STORAGE_SAS_TOKEN" in err, err
    assert "that outlasts the run" in err, err
    assert "committed" not in err.lower().replace("nothing was committed", "").replace("not committed", ""), err
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    assert query(db, "SELECT exit_code FROM runs ORDER BY started_at")[-1:] == [(3,)], err


def test_an_abfs_root_naming_another_account_than_the_sign_in_is_refused(clean_env, azurite, az_site, tmp_path):
    # abfs://CONTAINER@ACCOUNT...: the account was ignored; the container of that name in the signed-in account was
    # read, and the manifest recorded it as the URL's account's.
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    db = tmp_path / "m.sqlite"
    other = cli("run", "--site", f"abfs://{az_site}@otheracct.dfs.core.windows.net/", "--db", str(db),
                "--no-validate")
    assert other.returncode == 2, other.stdout + other.stderr
    assert "names the storage account 'otheracct'" in other.stderr and "'devstoreaccount1'" in other.stderr
    assert f"name the container without an account: az://{az_site}\n" in other.stderr and "Traceback" not in other.stderr and not db.exists()
    same = cli("run", "--site", f"abfs://{az_site}@devstoreaccount1.dfs.core.windows.net/", "--db", str(db),
               "--no-validate")
    assert same.returncode in (0, 1) and "committed" in same.stdout, same.stdout + same.stderr  # (1: unparseable paths)


@pytest.mark.parametrize("url, refused", [
    ("abfs://c@other.dfs.core.windows.net/x", True), ("abfs://c@other/x", True),
    ("abfs://c@MYACCT.dfs.core.windows.net/x", False), ("abfs://c/x", False),
    # an address names no account (an emulator's endpoint): nothing to compare, as before
    ("abfs://c@127.0.0.1:10000/x", False), ("abfs://c@localhost/x", False),
])
def test_the_account_an_abfs_url_names_is_compared_with_the_sign_in(clean_env, url, refused):
    from chorus_batch.errors import UsageError

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", CONN)  # account myacct
    if refused:
        with pytest.raises(UsageError, match="names the storage account 'other'"):
            azure_sign_in(CloudSettings(), url=url, what="the root")
    else:
        assert azure_sign_in(CloudSettings(), url=url, what="the root").account_name == "myacct"


def test_an_endpoint_whose_certificate_is_not_trusted_names_the_ca_bundle_to_set(clean_env, tmp_path, capsys):
    """An https endpoint with a private CA's certificate (a TLS-inspecting proxy, a private endpoint): S3 said "check
    the URL and that the credentials for it are in the environment", Azure "check that it is reachable" (after retrying
    for the whole deadline). Now both say the certificate was refused and which variable names the CA bundle."""
    import http.server
    import ssl
    import threading

    from chorus_batch.cli import main
    from services import _make_tls

    ca, cert, key = _make_tls(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as server:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        endpoint = f"https://127.0.0.1:{server.server_address[1]}"
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": KEY,
                            "AWS_DEFAULT_REGION": "us-east-1", "CHORUS_BATCH_RETRY_DEADLINE_S": "1",
                            "AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=https;AccountName=myacct;"
                                                               f"AccountKey={KEY};BlobEndpoint={endpoint}/myacct;"}.items():
            clean_env.setenv(name, value)
        try:
            for url, variable in (("s3://site1/", "AWS_CA_BUNDLE"), ("az://site1/", "SSL_CERT_FILE or REQUESTS_CA_BUNDLE")):
                capsys.readouterr()
                code = main(["run", "--site", url, "--db", str(tmp_path / "m.sqlite"), "--no-validate"])
                err = capsys.readouterr().err
                assert code == 3, err
                assert "the https connection failed: the endpoint's certificate was refused" in err, err
                assert f"name a CA bundle that holds it: {variable}" in err, err
                no_secret(err)
        finally:
            server.shutdown()


def test_a_root_given_as_s3a_is_the_s3_root_it_names(clean_env, moto_s3, tmp_path):
    """s3a:// (Hadoop's and Spark's name for S3) and s3:// of one bucket's prefix were two roots: the second run's
    root took over every file of the first. Now it is the root s3://bucket/prefix, its files unchanged; a manifest an
    earlier release recorded with s3a:// goes on under that root."""
    from conftest import query

    bucket, db, run_at = _s3_site(clean_env, moto_s3, tmp_path, "s3a")
    first = run_at(f"s3a://{bucket}/export")
    assert first.label and first.counts["added"] == len(SITE_FILES)
    assert query(db, "SELECT location FROM roots") == [(f"s3://{bucket}/export",)]
    with sqlite3.connect(db) as con:  # as an earlier release recorded it
        con.execute("UPDATE roots SET location = ?", (f"s3a://{bucket}/export",))
    con.close()
    for url in (f"s3://{bucket}/export", f"s3a://{bucket}/export"):
        again = run_at(url)
        assert again.label is None and again.counts["unchanged"] == len(SITE_FILES), url
        assert query(db, "SELECT count(*) FROM roots") == [(1,)]


def test_an_expired_sas_in_a_connection_string_is_said_to_have_expired(clean_env, azurite, az_site, tmp_path, capsys):
    """A connection string with a SharedAccessSignature (BlobEndpoint=...;SharedAccessSignature=...) whose se= had
    passed said "sign-in failed" and "may be wrong or old"; a SAS token in AZURE_STORAGE_SAS_TOKEN said when it expired.
    Now the connection string's SAS does too, and what to do."""
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from chorus_batch.cli import main

    expiry = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - datetime.timedelta(hours=1)
    sas = generate_container_sas(azurite.account_name, az_site, account_key=azurite.account_key, expiry=expiry,
                                 permission=ContainerSasPermissions(read=True, list=True))
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}")
    capsys.readouterr()
    assert main(["run", "--site", f"az://{az_site}", "--db", str(tmp_path / "m.sqlite"), "--no-validate"]) == 3
    err = capsys.readouterr().err
    when = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"the SAS token expired at {when}" in err, err
    assert f"fix:   the connection string's SharedAccessSignature expired at {when}" in err, err
    assert sas.split("sig=")[1].split("&")[0] not in err


def test_a_header_a_sas_may_list_but_not_read_is_told_by_its_etag_not_a_size_and_time(clean_env, azurite, az_site,
                                                                                        tmp_path):
    """A first run with a list-only SAS takes the MD5s the listing stores, then cannot read the headers to check:
    each such file said "the next run sees no change in it (its size and modification time are as recorded)", a
    local file's words; a cloud object's run compares its ETag."""
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    config = tmp_path / "chorus.toml"
    config.write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    sas = generate_container_sas(azurite.account_name, az_site, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(list=True),
                                 expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    out = cli("run", "--config", str(config), "--site", f"az://{az_site}", "--db", str(tmp_path / "m.sqlite"), "-q",
              env={"AZURE_STORAGE_SAS_TOKEN": sas, "CHORUS_BATCH_RETRY_BASE_S": "0.01"})
    said = [line for line in out.stdout.splitlines() if "give this user read permission on it" in line]
    assert said, out.stdout + out.stderr
    assert all("its ETag is as recorded" in line and "modification time" not in line for line in said), said


def test_a_missing_bucket_whose_name_breaks_s3s_rules_is_said_so_with_the_bucket_it_may_mean(moto_s3, tmp_path):
    """Any name a bucket ever had passes the URL check (a us-east-1 bucket made before 2018 may hold capitals and '_'),
    so `s3://Site_Data/export` was only "the bucket Site_Data does not exist". Now the fix says which rule the name
    breaks, and gives the bucket it may mean (lowercase, '_' as '-') when that one is there; a valid name is as was."""
    bucket = moto_s3.new_bucket("site")
    typed = bucket.upper().replace("-", "_")
    env = {**moto_s3.env, "AWS_ENDPOINT_URL": moto_s3.endpoint_url}
    out = cli("run", "--site", f"s3://{typed}/export", "--db", str(tmp_path / "m.sqlite"), "--no-validate", env=env)
    assert out.returncode == 3, out.stderr
    assert f"the bucket {typed} does not exist" in out.stderr and "breaks S3's rules for bucket names" in out.stderr
    assert f"the bucket {bucket} is there; give s3://{bucket}/export" in out.stderr
    for name in ("ab", "10.0.0.1", "a..b", "-site", "xn--site"):
        out = cli("run", "--site", f"s3://{name}", "--db", str(tmp_path / "m.sqlite"), "--no-validate", env=env)
        assert out.returncode == 3 and "breaks S3's rules for bucket names" in out.stderr, (name, out.stderr)
        assert "is there; give" not in out.stderr
    out = cli("run", "--site", "s3://no-such-bucket-x1", "--db", str(tmp_path / "m.sqlite"), "--no-validate", env=env)
    assert out.returncode == 3 and "does not exist" in out.stderr and "breaks" not in out.stderr
    assert not (tmp_path / "m.sqlite").exists()


@pytest.mark.parametrize("store", ["azure", "s3"])
def test_validate_of_a_manifest_whose_cloud_prefix_has_no_object_left_says_so_once_and_records_nothing(
        clean_env, azurite, moto_s3, tmp_path, store):
    """A cloud root whose every object was removed (the export moved to another prefix; an object store keeps no
    empty folder): `validate --db` said of each file "no such object ... it is gone", a `file.unread` error per file
    stored with the version, exit 1. A local root that is not there stops once, before reading, exit 2: so does this,
    naming the root and what to do; no finding is recorded."""
    from conftest import query, settings
    from services import upload_tree, upload_tree_s3

    from chorus_batch import run

    env = {}
    if store == "azure":
        env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
        container = azurite.new_container("gone")
        with azurite.service_client() as client:
            upload_tree(client, container, _tree(tmp_path / "up", SITE_FILES), prefix="export")
        url, cloud_settings = f"az://{container}/export", None
    else:
        env.update(moto_s3.env, AWS_ENDPOINT_URL_S3=moto_s3.endpoint_url)
        bucket = moto_s3.new_bucket("gone")
        upload_tree_s3(moto_s3.client(), bucket, _tree(tmp_path / "up", SITE_FILES), prefix="export")
        url, cloud_settings = f"s3://{bucket}/export", CloudSettings(s3=S3Section(endpoint_url=moto_s3.endpoint_url))
    for name, value in env.items():
        clean_env.setenv(name, value)
    db = tmp_path / "m.sqlite"
    run(settings(url, db, validate_site=False, **({"cloud": cloud_settings} if cloud_settings else {})))
    if store == "azure":  # every blob under the prefix removed; the container stays
        with azurite.service_client() as client:
            box = client.get_container_client(container)
            for blob in list(box.list_blobs(name_starts_with="export/")):
                box.delete_blob(blob.name)
    else:
        s3 = moto_s3.client()
        for item in s3.list_objects_v2(Bucket=bucket, Prefix="export/")["Contents"]:
            s3.delete_object(Bucket=bucket, Key=item["Key"])
    before = query(db, "SELECT * FROM findings ORDER BY 1, 2, 3"), query(db, "SELECT * FROM validations")
    done = cli("validate", "--db", str(db), cwd=tmp_path, env=env)
    said = done.stderr
    assert done.returncode == 2, done.stdout + said
    assert said.count("chorus-batch: error:") == 1 and "Traceback" not in said, said
    assert f"the root it is recorded under, {url}, has no object under it" in said, said
    assert "give --site the place the site is in now, or record its files' removal with chorus-batch run" in said
    assert (query(db, "SELECT * FROM findings ORDER BY 1, 2, 3"), query(db, "SELECT * FROM validations")) == before


def test_a_blob_whose_name_holds_a_tab_or_a_line_break_is_read_by_validation_not_called_gone(clean_env, azurite,
                                                                                            tmp_path):
    """adlfs parses a path as a URL, which drops tabs and line breaks: a blob just listed under such a name (a run
    keeps it, and names it file.unportable_name) was "no such object (deleted or renamed since it was listed) ... it
    is gone", a false file.unread error, on every check. It is read through the Blob service, seekable."""
    from conftest import query
    from services import upload_tree

    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    container = azurite.new_container("tabs")
    names = {"1/Images/CT/tab\there.dcm": b"not dicom, tab", "1/Images/CT/line\nbreak.dcm": b"not dicom, lf",
             "1/Images/CT/cr\rhere.dcm": b"not dicom, cr"}
    with azurite.service_client() as client:
        upload_tree(client, container, _tree(tmp_path / "up", SITE_FILES), prefix="s")
        box = client.get_container_client(container)
        for name, data in names.items():
            box.upload_blob(f"s/{name}", data)
    source = open_source(f"az://{container}/s")
    for name, data in names.items():
        with source.open(name) as f:
            assert f.read(3) == data[:3]
            f.seek(-2, 2)
            assert f.read() == data[-2:]
            f.seek(0)
            assert f.read() == data
    with pytest.raises(FileNotFoundError):
        source.open("1/Images/CT/not\there.dcm")
    db = tmp_path / "m.sqlite"
    done = cli("run", "--site", f"az://{container}/s", "--db", str(db), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    unread = query(db, "SELECT srcfile, message FROM findings WHERE rule = 'file.unread'")
    assert unread == [], unread
    read = query(db, "SELECT srcfile FROM findings WHERE rule = 'dicom.unreadable' AND srcfile LIKE '%/CT/%'")
    assert sorted(path for (path,) in read) == sorted(names), read
