import json, os, signal, time
from test_upload import central, committed_site, up, upload_process, wait_for, blobs, put_first_file, many_files, commit  # noqa: F401


def show(tag, out):
    js = json.loads(out.stdout) if out.stdout.strip().startswith("{") else None
    if js is None:
        print(f"--- {tag}: rc={out.returncode} (no json)\n{out.stdout[-800:]}\n{out.stderr[-800:]}")
        return
    print(f"--- {tag}: rc={out.returncode} exit_code={js['exit_code']}")
    for v in js["versions"]:
        print({k: v[k] for k in ("version", "files", "sent_before", "sent", "found", "bytes_sent", "complete",
                                 "manifest_copy", "manifest_copy_refused", "manifest_copy_kept", "manifest_copy_would_be")},
              "not_sent:", [(r["srcfile"], r["state"]) for r in v["not_sent"]])


def pair(central, db, tag, *extra):
    show(tag + " DRY", up(central, db, "--dry-run", "--json", *extra))
    show(tag + " REAL", up(central, db, "--json", *extra))


def test_probe(central, tmp_path):
    db = committed_site(tmp_path, 30)
    # resumed: a killed upload
    proc = upload_process(central, db, "upload")
    wait_for(proc, "test pause at upload")
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # plus a file at the centre sent by another tool (found)
    pair(central, db, "resumed")
    pair(central, db, "complete")
    pair(central, db, "complete --version", "--version", "20261101020000")
    # fresh version
    many_files(tmp_path / "site", 33)
    commit(tmp_path / "site", db, "20261102020000")
    pair(central, db, "fresh")


def test_probe_twin(central, tmp_path):
    db = committed_site(tmp_path, 3)
    # the folder holds another commit of the label: a twin's claim, then a twin's copy
    from azure.storage.blob import ContentSettings  # noqa: F401
    import sqlite3
    mid = sqlite3.connect(db).execute("SELECT value FROM meta WHERE key='manifest_id'").fetchone()[0]
    central.client.get_blob_client("20261101020000/_manifest/owner").upload_blob(
        b"", metadata={"chorus_manifest_id": mid, "chorus_version_fingerprint": "other"})
    pair(central, db, "twin claim")
    central.client.get_blob_client("20261101020000/_manifest/owner").delete_blob()
    central.client.get_blob_client("20261101020000/_manifest/manifest.sqlite").upload_blob(
        db.read_bytes(), metadata={"chorus_manifest_id": mid, "chorus_version_fingerprint": "other"})
    pair(central, db, "twin copy")
    # all files there already (found), twin copy: nothing sendable after the dry run's look
    pair(central, db, "twin copy again")
