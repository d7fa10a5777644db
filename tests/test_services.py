"""The real services of tests/services.py do what the other tests rely on."""

from __future__ import annotations

import hashlib
import socket

import pytest

import services
from conftest import write
from services import set_content_md5, upload_tree, upload_tree_s3

TREE = {"a.txt": b"alpha\n", "sub/b.bin": bytes(range(256)) * 40, "sub/deeper/c.txt": b"gamma gamma gamma\n"}
WRONG_MD5 = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    for rel, data in TREE.items():
        write(root, rel, data)
    return root


def _md5(rel: str) -> bytes:
    return hashlib.md5(TREE[rel]).digest()


def _stored_md5(entry) -> bytes | None:
    value = entry["content_settings"]["content_md5"]
    return bytes(value) if value is not None else None


def test_azurite_listing_reports_content_md5_as_stored(azurite, tree):
    container = azurite.new_container()
    with azurite.service_client() as client:
        upload_tree(client, container, tree, "md5")
        upload_tree(client, container, tree, "blocks", blocks=True)
        upload_tree(client, container, tree, "plain", content_md5=False)
        upload_tree(client, container, tree, "override", md5_override={"sub/b.bin": WRONG_MD5})
        # The service's own behaviour the helpers rely on: Put Blob computes a Content-MD5 when
        # none is sent, Put Block List does not, and set_content_md5 sets and clears it.
        raw = client.get_blob_client(container, "raw/put-blob.txt")
        raw.upload_blob(b"computed by the service")
        assert bytes(raw.get_blob_properties().content_settings.content_md5) == hashlib.md5(
            b"computed by the service").digest()
        set_content_md5(client, container, "raw/put-blob.txt", None)
        assert raw.get_blob_properties().content_settings.content_md5 is None
        set_content_md5(client, container, "raw/put-blob.txt", WRONG_MD5)
        assert bytes(raw.get_blob_properties().content_settings.content_md5) == WRONG_MD5
        blocks = client.get_blob_client(container, "blocks/sub/b.bin").get_block_list("committed")[0]
        assert len(blocks) == 3

    fs = azurite.fs()
    for prefix, expected in [
        ("md5", {rel: _md5(rel) for rel in TREE}),
        ("blocks", dict.fromkeys(TREE)),
        ("plain", dict.fromkeys(TREE)),
        ("override", {rel: WRONG_MD5 if rel == "sub/b.bin" else _md5(rel) for rel in TREE}),
    ]:
        found = fs.find(f"{container}/{prefix}", detail=True)
        assert {name.removeprefix(f"{container}/{prefix}/"): _stored_md5(e) for name, e in found.items()} == expected
        for name, entry in found.items():
            assert entry["etag"], name
            assert entry["size"] == len(TREE[name.removeprefix(f"{container}/{prefix}/")])
        assert fs.cat_file(f"{container}/{prefix}/sub/b.bin") == TREE["sub/b.bin"]


def test_azurite_restart_keeps_data(azurite):
    container = azurite.new_container("restart")
    with azurite.service_client() as client:
        client.get_blob_client(container, "kept.txt").upload_blob(b"survives a restart")
    port, location = azurite.port, azurite.location
    azurite.stop()
    try:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        azurite.start()
    assert (azurite.port, azurite.location) == (port, location)
    with azurite.service_client() as client:
        assert client.get_blob_client(container, "kept.txt").download_blob().readall() == b"survives a restart"


def test_azurite_missing_fails_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(services, "AZURITE_BLOB", tmp_path / "node_modules" / ".bin" / "azurite-blob")
    with pytest.raises(pytest.fail.Exception, match=r"scripts/test.*npm ci"):
        services.Azurite(tmp_path)


def test_azurite_https_oauth_with_managed_identity(azurite_oauth):
    from azure.core.exceptions import HttpResponseError
    from azure.identity import DefaultAzureCredential
    from azure.identity.aio import DefaultAzureCredential as AioDefaultAzureCredential
    from azure.storage.blob import BlobServiceClient

    svc = azurite_oauth
    assert svc.account_url.startswith("https://127.0.0.1:")
    setup = svc.new_container("setup")  # key-based over https
    with svc.identity_environment():
        credential = DefaultAzureCredential()
        before = svc.tokens_issued
        token = credential.get_token("https://storage.azure.com/.default")
        assert token.token.count(".") == 2 and token.expires_on > 0
        assert svc.tokens_issued == before + 1

        with svc.service_client(credential=credential) as client:
            name = services._new_name("oauth")
            client.create_container(name)
            client.get_blob_client(name, "dir/hello.txt").upload_blob(b"hello over https with a token")
            assert {name, setup} <= {c.name for c in client.list_containers()}

        # adlfs: account_name + account_host (adlfs builds https://{account_host}); an aio credential.
        # (adlfs closes the credential on its own loop when the filesystem is collected.)
        fs = svc.oauth_fs(credential=AioDefaultAzureCredential())
        assert fs.ls(f"{name}/dir", detail=False) == [f"{name}/dir/hello.txt"]
        assert fs.cat_file(f"{name}/dir/hello.txt") == b"hello over https with a token"
        # adlfs with no credential and anon=False builds its own aio DefaultAzureCredential.
        fs = svc.oauth_fs()
        assert f"{name}/dir/hello.txt" in fs.find(name)
    assert svc.tokens_issued >= before + 2
    assert all(q["resource"] == "https://storage.azure.com" for q in svc.identity.requests)

    # Azurite really checks the token: a wrong audience is refused.
    class WrongAudience:
        def get_token(self, *scopes, **kwargs):
            from azure.core.credentials import AccessToken

            token, exp = services.make_storage_jwt("https://vault.azure.net")
            return AccessToken(token, exp)

    with BlobServiceClient(svc.account_url, credential=WrongAudience()) as client:
        with pytest.raises(HttpResponseError) as refused:
            list(client.list_containers())
        assert refused.value.status_code in (401, 403)


def test_moto_etags(moto_s3, tree):
    client = moto_s3.client()
    bucket = moto_s3.new_bucket()
    single = upload_tree_s3(client, bucket, tree, "single")
    big = tree.parent / "big"
    write(big, "large.bin", b"\x5a" * (services.S3_PART_SIZE + 10))
    write(big, "small.bin", b"one part only")
    multi = upload_tree_s3(client, bucket, big, "multi", multipart=True)

    found = moto_s3.fs().find(bucket, detail=True)
    assert set(found) == {f"{bucket}/{k}" for k in [*single, *multi]}
    for key, md5 in single.items():
        assert found[f"{bucket}/{key}"]["ETag"] == f'"{md5.hex()}"'
    assert found[f"{bucket}/multi/large.bin"]["ETag"].endswith('-2"')
    assert found[f"{bucket}/multi/small.bin"]["ETag"].endswith('-1"')
    assert found[f"{bucket}/multi/large.bin"]["ETag"].strip('"').split("-")[0] != multi["multi/large.bin"].hex()
    assert found[f"{bucket}/multi/large.bin"]["size"] == services.S3_PART_SIZE + 10
    assert client.head_object(Bucket=bucket, Key="multi/large.bin")["ETag"] == found[f"{bucket}/multi/large.bin"]["ETag"]
