"""Cloud sites: the MD5 of each file version by its source (stored / computed / reused / unverifiable),
change detection by etag, the --cloud-md5 policy -- against real Azurite and moto S3 (tests/services.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import shutil
from pathlib import Path

import pytest

from chorus_batch.sources.base import FileChangedWhileHashing
from chorus_batch.testdata import Spec, make_testdata
from conftest import cli, paused, query, run_site, tree_md5, write
from services import set_content_md5, upload_tree, upload_tree_s3

WRONG_MD5 = bytes.fromhex("0123456789abcdef0123456789abcdef")  # set by hand: only a run that trusts it reports it


@pytest.fixture
def az_env(azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return azurite


@pytest.fixture
def s3_env(moto_s3, monkeypatch):
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint_url)
    return moto_s3


def small_site(root: Path) -> dict[str, str]:
    write(root, "OMOP/person.csv", b"person_id\n1\n")
    write(root, "000001/Waveforms/S1/S1.hea", b"S1 1 250 10\n")
    write(root, "000001/Waveforms/S1/S1.dat", bytes(range(256)) * 40)
    write(root, "000002/Waveforms/S2/S2_big.dat", b"block upload " * 2000)
    write(root, "000002/Waveforms/S2/S2_hand.dat", b"content md5 set by hand")
    return tree_md5(root)


def rows(db: Path) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in query(db, "SELECT srcfile, md5, md5_source, etag, size FROM source_files "
                                           "WHERE time_invalid IS NULL")}


def uploaded(azurite, local: Path, *, content_md5: bool = True):
    """`local` uploaded to a new container: (container, service client)."""
    container, client = azurite.new_container(), azurite.service_client()
    upload_tree(client, container, local, content_md5=content_md5)
    return container, client


def upload_small_site(azurite, local: Path) -> str:
    container, client = uploaded(azurite, local)
    blocks = {"000002/Waveforms/S2/S2_big.dat"}
    for name in blocks:  # again, in blocks: no Content-MD5
        one = local.parent / "blocks"
        shutil.rmtree(one, ignore_errors=True)
        write(one, name, (local / name).read_bytes())
        upload_tree(client, container, one, content_md5=False, blocks=True)
    set_content_md5(client, container, "000002/Waveforms/S2/S2_hand.dat", WRONG_MD5)
    return container


def test_stored_md5s_are_trusted_and_only_blobs_without_one_are_downloaded(az_env, tmp_path):
    local = tmp_path / "site"
    real = small_site(local)
    container = upload_small_site(az_env, local)
    db = tmp_path / "m.sqlite"
    result = run_site(f"az://{container}", db, validate_site=False)
    got = rows(db)
    assert set(got) == set(real)
    # The hand-set Content-MD5 is reported exactly: the blob was not downloaded.
    assert got["000002/Waveforms/S2/S2_hand.dat"][:2] == (WRONG_MD5.hex(), "stored")
    # The block blob had no stored MD5: downloaded and hashed.
    assert got["000002/Waveforms/S2/S2_big.dat"][:2] == (real["000002/Waveforms/S2/S2_big.dat"], "computed")
    for path in ("OMOP/person.csv", "000001/Waveforms/S1/S1.dat"):
        assert got[path][:2] == (real[path], "stored")
    assert all(etag for _md5, _source, etag, _size in got.values())
    assert result.md5_sources == {"computed": 1, "stored": 4, "reused": 0, "unverifiable": 0}
    assert result.n_hashed == 1

    # Nothing changed: nothing is downloaded, no version is written.
    again = run_site(f"az://{container}", db, validate_site=False)
    assert again.label is None and again.n_hashed == 0
    assert again.md5_sources == {"computed": 0, "stored": 0, "reused": 5, "unverifiable": 0}
    # The summary says where the MD5s came from on such a night too (it said so only when one was new)
    from chorus_batch.report.summary import summary_text

    assert ("MD5s: 0 read and hashed, 0 as stored by the storage, 5 unchanged (reused), 0 unverifiable"
            in summary_text(again))


def test_stored_only_never_downloads_and_says_which_files_are_unverifiable(az_env, tmp_path):
    local = tmp_path / "site"
    small_site(local)
    container = upload_small_site(az_env, local)
    db = tmp_path / "m.sqlite"
    out = cli("run", "--site", f"az://{container}", "--db", str(db), "--cloud-md5", "stored-only", "--no-validate",
              env={"AZURE_STORAGE_CONNECTION_STRING": az_env.connection_string})
    assert out.returncode == 1, out.stderr  # never counted as equal: a finding
    assert "unverifiable" in out.stdout and "000002/Waveforms/S2/S2_big.dat" in out.stdout
    got = rows(db)
    assert got["000002/Waveforms/S2/S2_big.dat"][:2] == (None, "unverifiable")
    assert query(db, "SELECT srcfile FROM scan_errors WHERE kind = 'unverifiable'") == [("000002/Waveforms/S2/S2_big.dat",)]
    assert query(db, "SELECT n_hashed FROM runs") == [(0,)]

    # Unchanged: still unverifiable (no new version); rewritten in place: replaced, and still no MD5.
    again = run_site(f"az://{container}", db, validate_site=False, cloud_md5="stored-only")
    assert again.label is None and again.exit_code == 1 and again.n_hashed == 0
    client = az_env.service_client()
    blob = client.get_blob_client(container, "000002/Waveforms/S2/S2_big.dat")
    blob.stage_block("b1", b"other bytes " * 100)
    blob.commit_block_list(["b1"])
    changed = run_site(f"az://{container}", db, validate_site=False, cloud_md5="stored-only")
    assert changed.counts["replaced"] == 1 and changed.n_hashed == 0
    assert rows(db)["000002/Waveforms/S2/S2_big.dat"][:2] == (None, "unverifiable")

    # Switching the policy resolves it: the blob is downloaded once and gets its MD5. The same blob (etag, size, time)
    # as recorded: its MD5 is learned, no new content (it was called `replaced`: a new version, sent again as changed).
    resolved = run_site(f"az://{container}", db, validate_site=False)
    assert resolved.n_hashed == 1 and resolved.exit_code == 0, resolved.errors.to_dicts()
    assert rows(db)["000002/Waveforms/S2/S2_big.dat"][:2] == (hashlib.md5(b"other bytes " * 100).hexdigest(), "computed")
    assert resolved.label is None and resolved.counts["replaced"] == 0
    assert query(db, "SELECT count(*) FROM versions") == [(2,)]
    settled = run_site(f"az://{container}", db, validate_site=False)  # learned for good: not downloaded again
    assert settled.label is None and settled.n_hashed == 0 and settled.exit_code == 0


def test_download_policy_reads_every_new_blob(az_env, tmp_path):
    local = tmp_path / "site"
    real = small_site(local)
    container = upload_small_site(az_env, local)
    db = tmp_path / "m.sqlite"
    result = run_site(f"az://{container}", db, validate_site=False, cloud_md5="download")
    got = rows(db)
    assert {p: r[0] for p, r in got.items()} == real  # the hand-set value is not believed
    assert {r[1] for r in got.values()} == {"computed"} and result.n_hashed == 5


def test_a_wrong_stored_md5_found_by_reverification_is_named_as_such_not_as_changed_content(az_env, tmp_path):
    """A client set a wrong Content-MD5: the default policy records it unread (documented); re-verification reads
    the blob, whose etag never moved, so the message says the stored MD5 was wrong (it said the content changed)."""
    local = tmp_path / "site"
    real = small_site(local)
    container = upload_small_site(az_env, local)
    db = tmp_path / "m.sqlite"
    run_site(f"az://{container}", db, validate_site=False)
    hand = "000002/Waveforms/S2/S2_hand.dat"
    assert rows(db)[hand][:2] == (WRONG_MD5.hex(), "stored")
    result = run_site(f"az://{container}", db, validate_site=False, verify_sample=100.0)
    assert result.counts["replaced"] == 1 and {p: r[0] for p, r in rows(db).items()} == real
    # The one found wrong was read for its new MD5 (recorded `computed`): the summary counted it among the 5 reused
    assert rows(db)[hand][1] == "computed"
    assert result.md5_sources == {"computed": 1, "stored": 0, "reused": 4, "unverifiable": 0}, result.md5_sources
    assert result.verification["files_found_changed"] == 1, result.verification  # (the summary said "5 unchanged files")
    (message,), = query(db, f"SELECT message FROM scan_errors WHERE srcfile = '{hand}' AND kind = 'silent_change'")
    assert "the stored MD5 is wrong" in message and "not written since (same etag)" in message, message
    assert WRONG_MD5.hex() in message and real[hand] in message and "content changed" not in message


def test_a_blob_changed_in_place_is_replaced_and_a_rewrite_with_the_same_bytes_is_not(az_env, tmp_path):
    local = tmp_path / "site"
    small_site(local)
    container, client = uploaded(az_env, local)
    db = tmp_path / "m.sqlite"
    run_site(f"az://{container}", db, validate_site=False)
    before = rows(db)

    same_size = b"1" * len((local / "000001/Waveforms/S1/S1.hea").read_bytes())
    write(local, "000001/Waveforms/S1/S1.hea", same_size)
    upload_tree(client, container, local, content_md5=True)  # every blob rewritten: new etags
    result = run_site(f"az://{container}", db, validate_site=False)
    assert result.counts["replaced"] == 1 and result.counts["unchanged"] == 4
    assert result.n_hashed == 0  # stored MD5s: nothing downloaded
    after = rows(db)
    assert after["000001/Waveforms/S1/S1.hea"][0] == hashlib.md5(same_size).hexdigest()
    # The rewritten but identical blobs keep their file version, with the new etag recorded.
    assert after["OMOP/person.csv"][2] != before["OMOP/person.csv"][2]
    assert after["OMOP/person.csv"][:2] == before["OMOP/person.csv"][:2]
    assert run_site(f"az://{container}", db, validate_site=False).md5_sources["reused"] == 5


def test_s3_single_part_etags_are_stored_md5s_and_multipart_ones_are_not(s3_env, tmp_path):
    local = tmp_path / "site"
    real = small_site(local)
    big = (b"0123456789abcdef" * 65536) * 6  # 6 MiB: two parts
    write(local, "000003/Waveforms/S3/S3_multi.dat", big)
    real["000003/Waveforms/S3/S3_multi.dat"] = hashlib.md5(big).hexdigest()
    bucket = s3_env.new_bucket()
    client = s3_env.client()
    multi = tmp_path / "multi"
    write(multi, "000003/Waveforms/S3/S3_multi.dat", big)
    (local / "000003/Waveforms/S3/S3_multi.dat").unlink()
    upload_tree_s3(client, bucket, local)
    upload_tree_s3(client, bucket, multi, multipart=True)

    db = tmp_path / "m.sqlite"
    result = run_site(f"s3://{bucket}", db, validate_site=False)
    got = rows(db)
    assert {p: r[0] for p, r in got.items()} == real
    assert got["000003/Waveforms/S3/S3_multi.dat"][1] == "computed"
    assert {r[1] for p, r in got.items() if p != "000003/Waveforms/S3/S3_multi.dat"} == {"stored"}
    assert result.n_hashed == 1

    strict = tmp_path / "strict.sqlite"
    only = run_site(f"s3://{bucket}", strict, validate_site=False, cloud_md5="stored-only")
    assert only.exit_code == 1 and only.n_hashed == 0
    assert rows(strict)["000003/Waveforms/S3/S3_multi.dat"][:2] == (None, "unverifiable")
    # the same object hashed under another policy: its MD5 learned, no `replaced` (no new version)
    learned = run_site(f"s3://{bucket}", strict, validate_site=False)
    assert learned.label is None and learned.n_hashed == 1 and learned.exit_code == 0
    assert rows(strict)["000003/Waveforms/S3/S3_multi.dat"][:2] == (real["000003/Waveforms/S3/S3_multi.dat"], "computed")


@pytest.mark.parametrize("service", ["azurite", "moto"])
def test_testdata_snapshots_in_the_cloud_give_the_local_manifest(service, request, tmp_path, monkeypatch):
    """Done-when of the cloud issue: the first and second snapshots, uploaded, give the same current rows
    (path, size, MD5) as a local run; under stored-only, unverifiable rows exactly where no MD5 is stored."""
    out = tmp_path / "testdata"
    make_testdata(out, Spec(persons=4))
    if service == "azurite":
        az = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az.connection_string)
        client, scheme = az.service_client(), "az"
        in_blocks = {"000002/Waveforms"}  # this person's waveforms uploaded in blocks: no Content-MD5

        def upload(snapshot: Path) -> str:
            container = az.new_container()
            upload_tree(client, container, snapshot, content_md5=True)
            for name in in_blocks:
                if (snapshot / name).is_dir():
                    upload_tree(client, container, snapshot / name, prefix=name, content_md5=False, blocks=True)
            return container
    else:
        s3 = request.getfixturevalue("moto_s3")
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
        client, scheme = s3.client(), "s3"
        in_blocks = set()

        def upload(snapshot: Path) -> str:
            bucket = s3.new_bucket()
            upload_tree_s3(client, bucket, snapshot)
            return bucket

    local_db, cloud_db, strict_db = tmp_path / "local.sqlite", tmp_path / "cloud.sqlite", tmp_path / "strict.sqlite"
    for snapshot in ("first", "second"):
        where = upload(out / snapshot)
        run_site(out / snapshot, local_db, validate_site=False, max_delete="all")
        run_site(f"{scheme}://{where}", cloud_db, validate_site=False, max_delete="all")
        run_site(f"{scheme}://{where}", strict_db, validate_site=False, max_delete="all", cloud_md5="stored-only")
        key = "SELECT srcfile, size, md5 FROM source_files WHERE time_invalid IS NULL ORDER BY srcfile"
        assert query(cloud_db, key) == query(local_db, key)
        strict = {path: md5 for path, _size, md5 in query(strict_db, key)}
        assert {p for p, md5 in strict.items() if md5 is None} == {
            p for p in strict if any(p.startswith(prefix + "/") for prefix in in_blocks)}
        assert {p: m for p, m in strict.items() if m is not None} == {
            p: m for p, _s, m in query(local_db, key) if strict[p] is not None}


def test_azurite_stopped_in_the_middle_of_a_run_fails_clearly_and_keeps_the_previous_version(az_env, tmp_path):
    local = tmp_path / "site"
    small_site(local)
    container, client = uploaded(az_env, local)
    db = tmp_path / "m.sqlite"
    first = run_site(f"az://{container}", db, validate_site=False)
    for i in range(3):  # new blobs without a stored MD5: the next run downloads them
        write(tmp_path / "more", f"000003/Waveforms/S3/S3_{i}.dat", bytes([i]) * 5000)
    upload_tree(client, container, tmp_path / "more", content_md5=False)
    env = {"AZURE_STORAGE_CONNECTION_STRING": az_env.connection_string, "CHORUS_BATCH_TEST_PAUSE": "hashing+3",
           "CHORUS_BATCH_RETRY_BASE_S": "0.05", "CHORUS_BATCH_RETRY_DEADLINE_S": "5"}
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", f"az://{container}", "--db", str(db),
                             "--no-validate"], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = ""
        while "test pause at hashing" not in line:
            line = proc.stderr.readline()
            assert line, "the run ended before it reached the hashing"
        az_env.stop()
        out, err = proc.communicate(timeout=120)
    finally:
        if not az_env.running:
            az_env.start()
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "internal error" not in err
    assert "cannot read" in err and "fix:" in err and "nothing was committed" in err
    assert "AccountKey" not in err and az_env.account_key not in err
    assert query(db, "SELECT label FROM versions") == [(first.label,)]  # the previous version, intact
    again = run_site(f"az://{container}", db, validate_site=False)
    assert again.counts["added"] == 3 and again.n_hashed == 3


def paused_at_hashing(az_env, container: str, db: Path) -> subprocess.Popen:
    """A run of the container, paused for 2 s once it starts hashing (to change the container meanwhile)."""
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", f"az://{container}", "--db", str(db),
                             "--no-validate"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": az_env.connection_string,
                                 "CHORUS_BATCH_TEST_PAUSE": "hashing+2"})
    assert proc.stderr is not None
    line = ""
    while "test pause at hashing" not in line:
        line = proc.stderr.readline()
        assert line, "the run ended before it reached the hashing"
    return proc


def test_a_blob_that_vanishes_before_it_is_read_is_recorded_like_a_local_file(az_env, tmp_path):
    local = tmp_path / "site"
    small_site(local)
    container, client = uploaded(az_env, local, content_md5=False)  # no stored MD5s: every blob is downloaded
    db = tmp_path / "m.sqlite"
    proc = paused_at_hashing(az_env, container, db)
    client.get_blob_client(container, "OMOP/person.csv").delete_blob()  # listed, then gone
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert query(db, "SELECT kind FROM scan_errors WHERE srcfile = 'OMOP/person.csv'") == [("vanished",)]
    assert "OMOP/person.csv" not in rows(db) and len(rows(db)) == 4


def test_a_container_deleted_while_its_blobs_are_read_fails_the_run_instead_of_recording_them_vanished(az_env, tmp_path):
    """The container itself gone mid-run (ContainerNotFound) is not "every file disappeared": the run fails with what
    happened, nothing is committed, the previous version stays (each blob was recorded as vanished and a version
    committed from the listing of a container that no longer existed)."""
    local = tmp_path / "site"
    small_site(local)
    container, client = uploaded(az_env, local)
    db = tmp_path / "m.sqlite"
    first = run_site(f"az://{container}", db, validate_site=False)
    write(tmp_path / "more", "000003/Waveforms/S3/S3.dat", b"no stored MD5" * 100)
    upload_tree(client, container, tmp_path / "more", content_md5=False)  # the next run downloads it
    proc = paused_at_hashing(az_env, container, db)
    client.delete_container(container)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, (out, err)
    assert "the container does not exist" in err and "nothing was committed" in err, err
    assert "Traceback" not in err and "disappeared" not in out + err
    assert query(db, "SELECT label FROM versions") == [(first.label,)]
    assert query(db, "SELECT count(*) FROM scan_errors") == [(0,)]


def test_an_s3_object_is_read_with_one_head_before_and_one_after_and_a_write_during_the_read_is_caught(s3_env):
    """Reading an object for its MD5 cost 4 requests (HEAD, s3fs's own HEAD in open and another for its ranged
    GETs, GET, HEAD after): the info asked for first is handed to s3fs's file, so 3; and an object written while
    it is read (between two ranged GETs of DOWNLOAD_BLOCK) is still caught by the etag after."""
    from chorus_batch.sources import open_source
    from chorus_batch.sources.remote import DOWNLOAD_BLOCK

    bucket = s3_env.new_bucket("reads")
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="site/OMOP/person.csv", Body=b"person_id\n1\n")
    client.put_object(Bucket=bucket, Key="site/big.dat", Body=b"a" * (DOWNLOAD_BLOCK + 1024))
    source = open_source(f"s3://{bucket}/site")
    buffer = bytearray(64 << 10)
    source.hash_file("OMOP/person.csv", buffer)  # (the client exists from here on)
    calls: list[str] = []
    source.fs.s3.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    out = source.hash_file("OMOP/person.csv", buffer)
    assert out.md5 == hashlib.md5(b"person_id\n1\n").hexdigest() and out.size == 12
    assert calls == ["HeadObject", "GetObject", "HeadObject"]

    def rewrite_after_the_first_block(reader):
        reader.read(10)
        client.put_object(Bucket=bucket, Key="site/big.dat", Body=b"b" * (DOWNLOAD_BLOCK + 1024))

    with pytest.raises(FileChangedWhileHashing, match="etag moved"):
        source.hash_file("big.dat", buffer, rewrite_after_the_first_block)


def test_snapshots_and_zero_byte_blobs_give_the_manifest_of_a_local_copy(az_env, tmp_path):
    """A blob's snapshots are not files of the site (only the base blob is listed); a zero-byte blob committed from
    no blocks (no Content-MD5) is downloaded and hashed as an empty file; a zero-byte Put Blob's stored MD5 is taken."""
    local = tmp_path / "site"
    small_site(local)
    write(local, "OMOP/empty_put.csv", b"")
    container, client = uploaded(az_env, local)
    blobs = client.get_container_client(container)
    blobs.get_blob_client("OMOP/person.csv").create_snapshot()
    write(local, "OMOP/person.csv", b"person_id\n1\n2\n")  # the base blob moves on; its snapshot keeps the old bytes
    blobs.upload_blob("OMOP/person.csv", b"person_id\n1\n2\n", overwrite=True)
    write(local, "OMOP/empty_blocks.csv", b"")
    blobs.get_blob_client("OMOP/empty_blocks.csv").commit_block_list([])
    key = "SELECT srcfile, size, md5 FROM source_files WHERE time_invalid IS NULL ORDER BY srcfile"
    run_site(local, tmp_path / "local.sqlite", validate_site=False)
    run_site(f"az://{container}", tmp_path / "az.sqlite", validate_site=False)
    assert query(tmp_path / "az.sqlite", key) == query(tmp_path / "local.sqlite", key)
    sources = dict(query(tmp_path / "az.sqlite", "SELECT srcfile, md5_source FROM source_files"))
    assert sources["OMOP/empty_blocks.csv"] == "computed" and sources["OMOP/empty_put.csv"] == "stored"


def test_a_blob_with_a_content_encoding_is_hashed_and_read_as_the_bytes_it_holds(az_env, tmp_path):
    """A blob stored with Content-Encoding: gzip (azcopy --content-encoding, a web-serving tool's upload of a .gz) was
    downloaded decoded by the SDK's default: without a stored MD5 its size never matched the listing's ("changed while
    hashing" every run, never recorded), and a header read or an upload's copy (adlfs, in ranges) got decoded bytes or
    a range of gzip decoded into garbage. Its bytes are what a local copy (or S3) holds: the manifests are the same."""
    import gzip

    from azure.storage.blob import BlobBlock, ContentSettings

    local = tmp_path / "site"
    write(local, "OMOP/person.csv", b"person_id,gender_concept_id\n1,8507\n")
    write(local, "Metadata/notes.csv.gz", gzip.compress(b"note_id,text\n" + b"1,abc\n" * 500))
    write(local, "OMOP/death.csv", gzip.compress(b"person_id,death_date\n1,2020-01-01\n"))  # gzip bytes, named .csv
    container, client = uploaded(az_env, local)
    blobs = client.get_container_client(container)
    encoded = ContentSettings(content_type="text/csv", content_encoding="gzip")
    notes = blobs.get_blob_client("Metadata/notes.csv.gz")  # in blocks: no stored MD5, downloaded to be hashed
    notes.stage_block("b1", (local / "Metadata/notes.csv.gz").read_bytes())
    notes.commit_block_list([BlobBlock("b1")], content_settings=encoded)
    death = (local / "OMOP/death.csv").read_bytes()  # a stored MD5 (not downloaded by the run): read by validation
    blobs.upload_blob("OMOP/death.csv", death, overwrite=True, content_settings=ContentSettings(
        content_type="text/csv", content_encoding="gzip", content_md5=bytearray(hashlib.md5(death).digest())))
    key = "SELECT srcfile, size, md5 FROM source_files WHERE time_invalid IS NULL ORDER BY srcfile"
    findings = "SELECT rule, srcfile, message FROM findings ORDER BY rule, srcfile"
    run_site(local, tmp_path / "local.sqlite")
    result = run_site(f"az://{container}", tmp_path / "az.sqlite")
    assert query(tmp_path / "az.sqlite", "SELECT srcfile, kind FROM run_errors") == []
    assert query(tmp_path / "az.sqlite", "SELECT srcfile, kind FROM scan_errors") == [] and result.label is not None
    assert query(tmp_path / "az.sqlite", key) == query(tmp_path / "local.sqlite", key)
    assert query(tmp_path / "az.sqlite", findings) == query(tmp_path / "local.sqlite", findings)


ARCHIVE_WORDS = "in an archive tier"


def test_an_archived_blob_is_that_files_problem_never_the_runs_nor_its_contents(az_env, tmp_path):
    """A blob in the Archive tier cannot be read until it is rehydrated. One without a stored MD5 failed the whole run
    (exit 3, "BlobArchived ... check the URL and the credentials"), and so did the nightly re-verification choosing one
    with a stored MD5; a header read of one was taken for content that does not parse ("not a readable WFDB header:
    ... <Error><Code>BlobArchived ..."), cached as its facts. Each is now that file's error, said as such."""
    from azure.storage.blob import BlobBlock

    local = tmp_path / "site"
    small_site(local)
    container, client = uploaded(az_env, local)
    blobs = client.get_container_client(container)
    old = blobs.get_blob_client("000002/Waveforms/S2/old.dat")  # in blocks: no stored MD5, to be downloaded
    old.stage_block("b1", b"archived bytes")
    old.commit_block_list([BlobBlock("b1")])
    for name in ("000002/Waveforms/S2/old.dat", "000001/Waveforms/S1/S1.hea"):  # S1.hea: its MD5 stored, read by checks
        blobs.get_blob_client(name).set_standard_blob_tier("Archive")
    db = tmp_path / "az.sqlite"
    result = run_site(f"az://{container}", db)
    assert result.label is not None and result.exit_code == 1
    (kind, message), = query(db, "SELECT kind, message FROM scan_errors WHERE srcfile = '000002/Waveforms/S2/old.dat'")
    assert kind == "unreadable" and ARCHIVE_WORDS in message
    (rule, message), = query(db, "SELECT rule, message FROM findings WHERE srcfile = '000001/Waveforms/S1/S1.hea' "
                                 "AND severity = 'error'")
    assert rule == "file.unread" and ARCHIVE_WORDS in message and "<Error>" not in message
    again = run_site(f"az://{container}", db, verify_sample=100.0)  # re-verification picks the archived S1.hea
    assert again.exit_code == 1
    assert {kind for (kind,) in query(db, "SELECT kind FROM scan_errors")} == {"unreadable"}


def test_an_s3_object_in_glacier_is_that_files_problem_said_as_such(s3_env, tmp_path):
    """S3 says InvalidObjectState (403) of an object in Glacier: s3fs makes it a PermissionError, said "not allowed to
    read ... allow s3:GetObject" / "give this user read permission": the archive tier is named instead."""
    client = s3_env.client()
    bucket = s3_env.new_bucket()
    client.put_object(Bucket=bucket, Key="OMOP/person.csv", Body=b"person_id\n1\n", StorageClass="GLACIER")
    upload = client.create_multipart_upload(Bucket=bucket, Key="000001/Waveforms/S1/S1.dat", StorageClass="GLACIER")
    part = client.upload_part(Bucket=bucket, Key="000001/Waveforms/S1/S1.dat", UploadId=upload["UploadId"],
                              PartNumber=1, Body=b"x" * 100)
    client.complete_multipart_upload(Bucket=bucket, Key="000001/Waveforms/S1/S1.dat", UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    db = tmp_path / "s3.sqlite"
    result = run_site(f"s3://{bucket}", db)
    assert result.exit_code == 1
    (kind, message), = query(db, "SELECT kind, message FROM scan_errors WHERE srcfile = '000001/Waveforms/S1/S1.dat'")
    assert kind == "unreadable" and ARCHIVE_WORDS in message and "permission" not in message
    (message,), = query(db, "SELECT message FROM findings WHERE srcfile = 'OMOP/person.csv' AND rule = 'file.unread'")
    assert ARCHIVE_WORDS in message and "permission" not in message


def test_a_blob_written_after_it_was_listed_gives_no_facts_to_its_listed_md5(az_env, tmp_path):
    # A header with a stored MD5 is not downloaded by the run: validation reads its facts after the commit and
    # caches them under the listed MD5. Written meanwhile, the new content's facts were cached under the old MD5
    # (for every file with that MD5, for good) and its findings told of content the manifest does not hold.
    local = tmp_path / "site"
    write(local, "OMOP/person.csv", b"person_id\n1\n")
    write(local, "000001/Waveforms/S1/S1.hea", b"S1 1 250 10\nS1.dat 16 200 16 0 0 0 0 ECG\n")
    write(local, "000001/Waveforms/S1/S1.dat", bytes(40))
    container, client = uploaded(az_env, local)
    write(local / "blocks", "000001/Waveforms/S1/S1.dat", bytes(40))  # no stored MD5: the run reads it (and pauses)
    upload_tree(client, container, local / "blocks", content_md5=False, blocks=True)
    listed = hashlib.md5((local / "000001/Waveforms/S1/S1.hea").read_bytes()).hexdigest()
    db = tmp_path / "m.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", f"az://{container}", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "hashing+2"})
    assert proc.stderr is not None
    while "test pause at hashing" not in (line := proc.stderr.readline()):
        assert line, "the run ended before it reached the hashing"
    client.get_blob_client(container, "000001/Waveforms/S1/S1.hea").upload_blob(  # listed, then written
        b"OTHER 3 999 77\n", overwrite=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert rows(db)["000001/Waveforms/S1/S1.hea"][:2] == (listed, "stored")  # as listed
    assert query(db, "SELECT facts FROM file_facts WHERE md5 = ?", (listed,)) == []  # nothing cached under it
    said = query(db, "SELECT message FROM findings WHERE srcfile = '000001/Waveforms/S1/S1.hea'")
    assert any("written since it was listed" in m for (m,) in said), said
    # The next run records the change, reads the new content and caches its facts under its own MD5.
    again = cli("run", "--site", f"az://{container}", "--db", str(db))
    assert again.returncode in (0, 1), again.stderr
    new_md5 = rows(db)["000001/Waveforms/S1/S1.hea"][0]
    assert new_md5 != listed and query(db, "SELECT count(*) FROM file_facts WHERE md5 = ?", (new_md5,)) == [(1,)]
    assert query(db, "SELECT facts FROM file_facts WHERE md5 = ?", (listed,)) == []


def test_an_object_written_between_its_listing_and_its_read_is_recorded_with_the_etag_of_the_bytes_read(s3_env, tmp_path):
    """A row read for its MD5 keeps the size and last-modified of the read (as a local file keeps the stat of its
    hash), but took the etag of the listing: an S3 object written in between was recorded with the MD5 of the new
    bytes and the etag (an S3 single-part etag is the MD5) of the old ones, a version row that contradicts itself."""
    bucket = s3_env.new_bucket("between")
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="site/OMOP/person.csv", Body=b"person_id\n1\n")
    client.put_object(Bucket=bucket, Key="site/OMOP/death.csv", Body=b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    assert cli("run", "--site", f"s3://{bucket}/site", "--db", str(db), "--no-validate").returncode == 0
    client.put_object(Bucket=bucket, Key="site/OMOP/death.csv", Body=b"person_id\n2\n")  # listed as this ...
    proc = paused("run", "--site", f"s3://{bucket}/site", "--db", str(db), "--no-validate", "--cloud-md5", "download",
                  "--verify-sample", "0", at="hashing+2")
    written = b"person_id\n3\n"  # ... read as this (same size)
    client.put_object(Bucket=bucket, Key="site/OMOP/death.csv", Body=written)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    md5, source, etag, size = rows(db)["OMOP/death.csv"]
    assert (md5, source, size) == (hashlib.md5(written).hexdigest(), "computed", len(written))
    assert etag == md5, (etag, md5)
    # the next run finds the object as recorded: nothing read, nothing changed
    again = cli("run", "--site", f"s3://{bucket}/site", "--db", str(db), "--no-validate", "--json", "--verify-sample", "0")
    assert again.returncode == 0 and '"files_hashed": 0' in again.stdout and '"unchanged": 2' in again.stdout, again.stdout


def test_an_append_or_page_blob_is_hashed_not_taken_at_a_content_md5_its_writes_never_updated(az_env, tmp_path):
    """Append Block and Put Page leave a blob's Content-MD5 as it was set at its creation: an append blob created
    with the MD5 of its first block and appended to since was recorded with that MD5 ('stored'), the MD5 of bytes it
    no longer holds (equal to another file's, which held just those bytes)."""
    from azure.storage.blob import ContentSettings

    first, later = b"person_id\n1\n", b"2\n3\n"
    container, client = az_env.new_container(), az_env.service_client()
    blobs = client.get_container_client(container)
    blobs.upload_blob("OMOP/person.csv", first)  # a block blob: its Content-MD5 is its bytes' (the service's own)
    claimed = ContentSettings(content_md5=bytearray(hashlib.md5(first).digest()))
    appended = blobs.get_blob_client("OMOP/death.csv")
    appended.create_append_blob(content_settings=claimed)
    appended.append_block(first)
    appended.append_block(later)
    page = bytes(range(256)) * 2
    paged = blobs.get_blob_client("000001/Waveforms/S1/S1.dat")
    paged.create_page_blob(size=len(page), content_settings=ContentSettings(
        content_md5=bytearray(hashlib.md5(bytes(len(page))).digest())))  # the MD5 of the zeros it was made with
    paged.upload_page(page, offset=0, length=len(page))
    db = tmp_path / "m.sqlite"
    result = run_site(f"az://{container}", db, validate_site=False)
    got = rows(db)
    assert got["OMOP/person.csv"][:2] == (hashlib.md5(first).hexdigest(), "stored")
    assert got["OMOP/death.csv"][:2] == (hashlib.md5(first + later).hexdigest(), "computed")
    assert got["000001/Waveforms/S1/S1.dat"][:2] == (hashlib.md5(page).hexdigest(), "computed")
    assert result.md5_sources == {"computed": 2, "stored": 1, "reused": 0, "unverifiable": 0}


@pytest.mark.parametrize("store", ["s3", "az"])
def test_an_object_replaced_by_a_folder_of_that_name_before_its_read_is_gone_not_an_empty_file(
        store, az_env, s3_env, tmp_path):
    """An object deleted after the listing while keys under its name are there (`x.dat/part`: a folder to fsspec) was
    "read" by the S3 source as the folder: recorded as an empty file, MD5 d41d8cd9..., last-modified 1970. It is gone,
    as the Azure source says of it."""
    db = tmp_path / "m.sqlite"
    if store == "s3":
        bucket, client = s3_env.new_bucket("folder"), s3_env.client()
        put = lambda key, body: client.put_object(Bucket=bucket, Key=f"site/{key}", Body=body)  # noqa: E731
        delete = lambda key: client.delete_object(Bucket=bucket, Key=f"site/{key}")  # noqa: E731
        url = f"s3://{bucket}/site"
    else:
        container = az_env.new_container()
        blobs = az_env.service_client().get_container_client(container)
        put = lambda key, body: blobs.upload_blob(f"site/{key}", body, overwrite=True)  # noqa: E731
        delete = lambda key: blobs.delete_blob(f"site/{key}")  # noqa: E731
        url = f"az://{container}/site"
    put("OMOP/person.csv", b"person_id\n1\n")
    put("000001/Waveforms/S1/S1.dat", bytes(range(256)) * 4)
    proc = paused("run", "--site", url, "--db", str(db), "--no-validate", "--cloud-md5", "download", "--json",
                  at="hashing+2")
    delete("000001/Waveforms/S1/S1.dat")
    put("000001/Waveforms/S1/S1.dat/part.dat", b"now a folder")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "000001/Waveforms/S1/S1.dat" not in rows(db), rows(db)
    said = query(db, "SELECT kind FROM scan_errors WHERE srcfile = '000001/Waveforms/S1/S1.dat'")
    assert said == [("vanished",)], said


@pytest.mark.parametrize("service", ["azurite", "moto"])
def test_an_empty_object_named_like_the_folder_of_other_objects_is_a_folder_marker(service, request, tmp_path,
                                                                                     monkeypatch):
    """An empty `S1` beside `S1/S1.hea` is a folder marker (as some tools make them, without '/' or hdi_isfolder): it
    was tracked as a file a local copy has not. It is left out silently. One that holds bytes is data an object store
    keeps beside the folder: tracked (validation's file.name_clash names it; test_upload sends and verifies it)."""
    local = tmp_path / "site"
    small_site(local)
    extra = {"000001/Waveforms/S1": b"", "000002/Waveforms/S2": b"stray bytes"}
    if service == "azurite":
        az = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", az.connection_string)
        store, client = uploaded(az, local)
        for name, data in extra.items():
            client.get_container_client(store).upload_blob(name, data)
        site = f"az://{store}"
    else:
        s3 = request.getfixturevalue("moto_s3")
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
        store = s3.new_bucket()
        upload_tree_s3(s3.client(), store, local)
        for name, data in extra.items():
            s3.client().put_object(Bucket=store, Key=name, Body=data)
        site = f"s3://{store}"
    key = "SELECT srcfile, size, md5 FROM source_files WHERE time_invalid IS NULL ORDER BY srcfile"
    run_site(local, tmp_path / "local.sqlite", validate_site=False)
    result = run_site(site, tmp_path / "cloud.sqlite", validate_site=False)
    import hashlib

    stray = ("000002/Waveforms/S2", 11, hashlib.md5(b"stray bytes").hexdigest())
    assert query(tmp_path / "cloud.sqlite", key) == sorted(query(tmp_path / "local.sqlite", key) + [stray])
    # (told only as a path that fits no layout, as the same file would be beside an S2/ folder on a disk)
    assert query(tmp_path / "cloud.sqlite", "SELECT srcfile, kind FROM scan_errors") == [(stray[0], "unparseable")]
    assert result.exit_code == 1
