"""Files and folders the tool writes beside the manifest (report, registries, testdata, snapshots, the --db folder):
only a regular file is replaced, a path that cannot be written is a usage error (exit 2) naming it, and every
file is 0600 and every folder it makes 0700, whatever the umask. All go through fsutil (write_private,
private_folder), so these tests hold each writer to the shared rules."""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from chorus_batch.cli import main
from chorus_batch.errors import ExitCode, UsageError, WriteError
from chorus_batch.fsutil import write_private
from chorus_batch.testdata import Spec, make_testdata
from conftest import paused, run_site

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, sockets and modes are POSIX")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("out")
    make_testdata(base / "td", Spec(persons=2, files_per_person=6))
    run_site(base / "td" / "first", base / "m.sqlite", validate_site=False)
    return base / "m.sqlite"


def specials(tmp_path: Path) -> dict[str, Path]:
    """A symbolic link (to a regular file), a FIFO, a socket and a folder: none is a file to replace."""
    target = tmp_path / "target.html"
    target.write_text("kept")
    made = {"symbolic link": tmp_path / "link.html", "FIFO": tmp_path / "fifo.html", "socket": tmp_path / "sock.html",
            "folder": tmp_path / "folder.html"}
    made["symbolic link"].symlink_to(target)
    os.mkfifo(made["FIFO"])
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(made["socket"]))
    sock.close()
    made["folder"].mkdir()
    return made


@posix_only
def test_the_writer_replaces_only_a_regular_file(tmp_path):
    for kind, path in specials(tmp_path).items():
        before = os.lstat(path)
        with pytest.raises(WriteError, match=f"is a {kind}; only a regular file is replaced"):
            write_private(path, b"new")
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), kind
    assert (tmp_path / "target.html").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.html", "folder.html", "link.html", "sock.html",
                                                         "target.html"]  # no temporary file left
    regular = tmp_path / "target.html"
    write_private(regular, b"new")
    assert regular.read_bytes() == b"new" and mode(regular) == 0o600


@posix_only
def test_report_and_registry_out_refuse_a_link_a_fifo_or_a_device(manifest, tmp_path, capsys):
    made = specials(tmp_path)
    for path in (made["symbolic link"], made["FIFO"]):
        assert main(["report", "--db", str(manifest), "--out", str(path)]) == ExitCode.USAGE
        assert "only a regular file is replaced" in capsys.readouterr().err
    assert made["symbolic link"].is_symlink() and stat.S_ISFIFO(os.lstat(made["FIFO"]).st_mode)
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's twin (root only)
    except OSError:
        pass
    else:
        assert main(["report", "--db", str(manifest), "--out", str(tmp_path / "null")]) == ExitCode.USAGE
        assert "is a device" in capsys.readouterr().err and stat.S_ISCHR(os.lstat(tmp_path / "null").st_mode)
    reg = tmp_path / "reg"
    reg.mkdir()
    (reg / "image_registry.csv").symlink_to(tmp_path / "target.html")
    assert main(["registry", "--db", str(manifest), "--out", str(reg)]) == ExitCode.USAGE
    assert "image_registry.csv is a symbolic link" in capsys.readouterr().err
    assert (tmp_path / "target.html").read_text() == "kept"


@posix_only
def test_out_dev_stdout_is_pointed_to_out_dash(manifest, tmp_path, capsys):
    """`report --out /dev/stdout` was refused as "a symbolic link ... choose a new file name": what the reviewer
    wanted is standard output, which `--out -` writes; the refusal now says so."""
    for path in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        if os.path.lexists(path):
            assert main(["report", "--db", str(manifest), "--out", path]) == ExitCode.USAGE
            assert "give - as the file name to write to standard output (`--out -`)" in capsys.readouterr().err, path
    link = tmp_path / "out.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    assert main(["report", "--db", str(manifest), "--out", str(link)]) == ExitCode.USAGE
    assert "choose a new file name" in capsys.readouterr().err


def test_a_path_that_cannot_be_written_is_a_usage_error_naming_it(manifest, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [["report", "--out", str(tmp_path / "missing" / "r.html")], ["report", "--out", str(a_file / "r.html")],
             ["registry", "--out", str(a_file / "reg")], ["registry", "--out", str(a_file)]]
    if sys.platform == "linux":  # a folder that takes no new file
        cases += [["report", "--out", "/proc/chorus-report.html"], ["registry", "--out", "/proc/chorus-reg"]]
    for args in cases:
        assert main([args[0], "--db", str(manifest), *args[1:]]) == ExitCode.USAGE, args
        err = capsys.readouterr().err
        assert "internal error" not in err and "where:" in err and "fix:" in err, (args, err)
    for out in (a_file, a_file / "td", *(["/proc/chorus-td"] if sys.platform == "linux" else [])):
        assert main(["testdata", str(out), "--persons", "1"]) == ExitCode.USAGE, out
        err = capsys.readouterr().err
        assert "internal error" not in err and "where:" in err, (out, err)


def test_an_os_failure_while_writing_is_a_write_error_and_stays_an_os_error(tmp_path, monkeypatch):
    """A read-only file system, a full disk: the OS's reason and a fix; callers that take a failed write as best
    effort (`except OSError`: the state cache) still do."""
    import errno

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(WriteError) as caught:
        write_private(tmp_path / "r.html", b"x")
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, OSError)
    assert caught.value.errno == errno.EROFS and "read-only" in str(caught.value)
    assert str(tmp_path / "r.html") in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # the temporary file is removed


def test_a_new_file_is_written_where_the_file_system_has_no_hard_links_as_windows_says_it(tmp_path, monkeypatch):
    """A file written only where none is (`import-config --out` without --force) is put in place by a hard link; a
    file system without them falls back to a check and a rename. Windows' FAT, exFAT (a USB disk) and shares say
    so as EINVAL (ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED), which was not taken for "no hard links": the write
    failed. (os.link is made to answer as Windows does: Linux has no file system that says EINVAL.)"""
    import errno

    def no_links(*_args, **_kwargs):
        raise OSError(errno.EINVAL, "Incorrect function")

    monkeypatch.setattr(os, "link", no_links)
    write_private(tmp_path / "chorus.toml", b"[site]\n", new_only=True)
    assert (tmp_path / "chorus.toml").read_bytes() == b"[site]\n"
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "chorus.toml", b"other\n", new_only=True)
    assert (tmp_path / "chorus.toml").read_bytes() == b"[site]\n" and len(list(tmp_path.iterdir())) == 1


def test_a_set_written_over_an_earlier_one_where_the_file_system_has_no_hard_links_as_windows_says_it(tmp_path,
                                                                                                       monkeypatch):
    """`registry --out E:\\reg` again (a USB disk, FAT or exFAT, on Windows): each earlier file is kept aside by a hard
    link until the new set is in place, and a file system without them falls back to a copy; EINVAL, as Windows says
    it, was not taken for "no hard links" there (as it was for a new file): the second write failed, "cannot write"."""
    import errno

    from chorus_batch.fsutil import write_private_together

    def no_links(*_args, **_kwargs):
        raise OSError(errno.EINVAL, "Incorrect function")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "reg"
    out.mkdir()
    write_private_together({out / "a.csv": b"a1\n", out / "b.csv": b"b1\n"})
    write_private_together({out / "a.csv": b"a2\n", out / "b.csv": b"b2\n"})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a.csv": b"a2\n", "b.csv": b"b2\n"}


_CLOSED_FOLDER = """
import sys
from pathlib import Path
from chorus_batch.errors import WriteError
from chorus_batch.fsutil import private_folder, write_private
from chorus_batch.testdata import Spec, make_testdata
closed = Path(sys.argv[1])
for write in (lambda: write_private(closed / "r.html", b"x"), lambda: private_folder(closed / "reg"),
              lambda: make_testdata(closed / "td", Spec(persons=1))):
    try:
        write()
        print("written")
    except WriteError as exc:
        print("refused" if "Permission denied" in str(exc) else f"other: {exc}")
"""


def test_a_file_open_in_another_program_on_windows_is_said_so_not_an_unwritable_folder(tmp_path):
    """On Windows a registry CSV open in Excel (or a report in a viewer) cannot be replaced: "The process cannot
    access the file because it is being used by another process" (winerror 32, errno EACCES) was answered "choose a
    folder this user can write", of a folder the user could write. The fix now says to close the file there. (Python
    gives `winerror` on Windows only: the error here is the one Windows' rename raises, as Python builds it there.)"""
    import errno

    from chorus_batch.fsutil import cannot_write

    target = tmp_path / "waveform_registry.csv"
    for winerror in (32, 33):
        exc = PermissionError(errno.EACCES, "The process cannot access the file because it is being used by another "
                                            "process", str(target))
        exc.winerror = winerror
        said = cannot_write(target, exc)
        assert "being used by another process" in str(said) and "close it in the program that has it open" in said.fix
        assert "folder this user can write" not in said.fix, said.fix
    plain = cannot_write(target, PermissionError(errno.EACCES, "Permission denied", str(target)))
    assert plain.fix == "choose a folder this user can write"  # (POSIX, and Windows' access denied: as before)


def test_a_file_open_in_another_program_on_windows_is_said_so_when_its_replacement_is_denied(tmp_path, monkeypatch):
    """Windows refuses to rename a file over one that another program has open (Excel holding last night's
    waveform_registry.csv, a viewer the report) with ERROR_ACCESS_DENIED, winerror 5, not the sharing violation
    (32) a plain open meets: the fix said "choose a folder this user can write" of the folder the new file had
    just been written in. Access denied at that rename is the file's own: open elsewhere, or read-only (its
    attribute; os.stat shows it as a mode without write bits). (The error is the one Python builds of Windows'
    refusal there, `winerror` set; elsewhere it has none.)"""
    import errno

    from chorus_batch import fsutil

    target = tmp_path / "waveform_registry.csv"
    target.write_text("old\n")

    def denied(src, dst, _real=os.replace):
        if Path(dst) != target:  # (a set's marker file beside it is renamed into place too)
            return _real(src, dst)
        exc = PermissionError(errno.EACCES, "Access is denied", str(src), None, str(dst))
        exc.winerror = 5
        raise exc

    monkeypatch.setattr(fsutil.os, "replace", denied)
    for write in (lambda: fsutil.write_private(target, b"new\n"),
                  lambda: fsutil.write_private_together({target: b"new\n"})):
        with pytest.raises(WriteError) as said:
            write()
        assert "close it in the program that has it open" in said.value.fix, said.value.fix
        assert "folder this user can write" not in said.value.fix
        assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    target.chmod(0o444)  # (Windows' read-only attribute, as os.stat gives it there)
    with pytest.raises(WriteError) as said:
        fsutil.write_private(target, b"new\n")
    assert "read-only" in said.value.what and "attrib -r" in said.value.fix, (said.value.what, said.value.fix)
    # access denied making the file (no rename yet) is the folder's, as before
    plain = fsutil.cannot_write(target, PermissionError(errno.EACCES, "Access is denied", str(target)))
    assert plain.fix == "choose a folder this user can write"


def test_a_folder_this_user_cannot_write_is_a_usage_error(tmp_path):
    """As a user who may not write the folder: root, as CI runs, without the capability to override permissions."""
    import shutil
    import subprocess
    import sys

    closed = tmp_path / "closed"
    closed.mkdir(mode=0o500)
    command = [sys.executable, "-c", _CLOSED_FOLDER, str(closed)]
    if os.geteuid() == 0:
        assert shutil.which("setpriv"), "util-linux's setpriv drops root's capabilities for this test"
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                   "-dac_override,-dac_read_search", "--", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["refused"] * 3, out.stdout + out.stderr


def test_testdata_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    out = tmp_path / "td"
    (out / "first").mkdir(parents=True)
    (out / "first" / "old.txt").write_text("old")
    assert main(["testdata", str(out), "--persons", "1"]) == ExitCode.USAGE
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in out.rglob("*")] == ["first", "old.txt"]  # nothing mixed in
    (out / "first" / "old.txt").unlink()
    (out / "first").rmdir()
    assert main(["testdata", str(out), "--persons", "1", "--workers", "1"]) == ExitCode.OK  # an empty one is used


@pytest.mark.parametrize("sizes", [{"persons": 10**13}, {"persons": 100_000, "files_per_person": 1000},
                                   {"size": 10**14}, {"persons": 0}, {"change_fraction": 2}])
def test_testdata_sizes_beyond_the_limits_are_refused_up_front(sizes):
    # The Spec, not the command: without the check this would start writing (or planning) 10^8+ files.
    with pytest.raises(UsageError, match="out of range") as caught:
        Spec(**sizes)
    assert "10,000,000 files" in caught.value.fix


def test_testdata_limits_are_said_by_the_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as said:  # (each size option is checked as the argument is read, as --workers is)
        main(["testdata", str(tmp_path / "td"), "--persons", "10000000000000"])
    assert said.value.code == ExitCode.USAGE
    assert "--persons: must be at most 10,000,000" in capsys.readouterr().err and not (tmp_path / "td").exists()


@posix_only
def test_every_file_is_0600_and_every_folder_made_0700_under_umask_000(manifest, tmp_path, capsys):
    old = os.umask(0)
    try:
        assert main(["run", "--site", str(manifest.parent / "td" / "first"), "--db", str(tmp_path / "m.sqlite"),
                     "--parquet", str(tmp_path / "snaps" / "deep"), "--no-validate", "-q"]) == ExitCode.OK
        assert main(["report", "--db", str(manifest), "--out", str(tmp_path / "r.html")]) == ExitCode.OK
        assert main(["registry", "--db", str(manifest), "--out", str(tmp_path / "reg" / "deep")]) == ExitCode.OK
        assert main(["testdata", str(tmp_path / "td" / "deep"), "--persons", "2", "--workers", "1"]) == ExitCode.OK
    finally:
        os.umask(old)
    capsys.readouterr()
    made = [tmp_path / name for name in ("snaps", "r.html", "reg", "td")]
    paths = [p for top in made for p in (top, *top.rglob("*"))] + list(tmp_path.glob("m.sqlite*"))
    assert len(paths) > 100
    wrong = {str(p): oct(mode(p)) for p in paths if mode(p) != (0o700 if p.is_dir() else 0o600)}
    assert not wrong


@posix_only
def test_the_scratch_files_a_command_makes_are_owner_only_under_umask_000(manifest, tmp_path):
    """Files made by libraries, not by the tool's writer, took the umask's mode: the report's DuckDB database in its
    scratch folder was 0666 under umask 000 (as upload's manifest copy and verify --download's, with SQLite's -wal
    and -shm), holding every path. Looked at while the command still has them, before the folder is removed."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    old = os.umask(0)
    try:
        proc = paused("report", "--db", str(manifest), "--out", str(tmp_path / "r.html"), at="scratch-folder-end",
                      env={"TMPDIR": str(scratch)})
    finally:
        os.umask(old)
    try:
        made = list(scratch.rglob("*"))
        assert "review.duckdb" in {p.name for p in made}
        wrong = {str(p): oct(mode(p)) for p in made if mode(p) & 0o077}
        assert not wrong
    finally:
        proc.kill()
        proc.wait()


@posix_only
def test_a_manifest_restored_readable_is_made_owner_only_with_its_state_cache_by_a_run(manifest, tmp_path, capsys):
    """A manifest and its state cache copied back from a backup under umask 022 (0644): a run made the manifest 0600
    but, committing nothing, left the state cache (every current path with its MD5) readable by every user; and its
    lock, which the README names with them, stayed 0644."""
    site = manifest.parent / "td" / "first"
    db = tmp_path / "m.sqlite"
    assert main(["run", "--site", str(site), "--db", str(db), "--no-validate", "-q"]) == ExitCode.OK
    kept = [db, Path(f"{db}.state.parquet"), Path(f"{db}.lock")]
    for path in kept:
        assert path.exists()
        path.chmod(0o644)
    assert main(["run", "--site", str(site), "--db", str(db), "--no-validate", "-q"]) == ExitCode.OK  # no change
    capsys.readouterr()
    assert {path.name: oct(mode(path)) for path in kept} == {path.name: "0o600" for path in kept}


def test_what_a_run_writes_may_not_lie_inside_a_site_root(tmp_path, capsys):
    """A manifest inside the site was listed by every run as a site file that each commit changes (a new version
    every night, with its lock and state files) and would be sent to the centre by `upload`: refused up front."""
    make_testdata(tmp_path / "td", Spec(persons=2, files_per_person=4))
    site = tmp_path / "td" / "first"
    (tmp_path / "link").symlink_to(site)
    modality_root = tmp_path / "waves"
    modality_root.mkdir()
    (tmp_path / "chorus.toml").write_text(f'[site]\nroot = "{site}"\n[site.roots]\nWaveforms = "{modality_root}"\n')
    refused = [
        (["run", "--site", str(site), "--db", str(site / "m.sqlite")], "the manifest", "--db"),
        (["run", "--site", str(site), "--db", str(tmp_path / "link" / "OMOP" / "m.sqlite")], "the manifest", "--db"),
        (["status", "--site", f"file://{site}", "--db", str(site / "sub" / "m.sqlite")], "the manifest", "--db"),
        (["run", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--parquet", str(site / "pq")],
         "the Parquet snapshot folder", "--parquet"),
        (["run", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--shard", "0/2", "--staging",
          str(site / "staging")], "the shards' staging folder", "--staging"),
        (["run", "--config", str(tmp_path / "chorus.toml"), "--db", str(modality_root / "m.sqlite")], "the manifest",
         "--db"),
    ]
    for argv, name, where in refused:
        assert main(argv) == ExitCode.USAGE, argv
        err = capsys.readouterr().err
        assert f"{name} would lie inside the site's root" in err and f"where: {where}" in err, err
    assert not (tmp_path / "m.sqlite").exists() and not (site / "m.sqlite").exists()
    assert sorted(p.name for p in site.iterdir()) == ["000001", "000002", "Metadata", "OMOP", "image_registry.csv",
                                                      "waveform_registry.csv"]  # as testdata wrote it
    # Beside the site, under a name that starts like it, is outside.
    (tmp_path / "td" / "first-chorus").mkdir()
    assert main(["run", "--site", str(site), "--db", str(tmp_path / "td" / "first-chorus" / "m.sqlite"), "-q"]) == 0


def test_slurm_script_refuses_a_manifest_inside_the_site(tmp_path, capsys):
    """Said before a script is printed: every shard of the job would otherwise fail on it tonight."""
    make_testdata(tmp_path / "td", Spec(persons=2, files_per_person=4))
    site = tmp_path / "td" / "first"
    for extra, name, where in (([], "the manifest", "--db"),):
        assert main(["slurm-script", "--site", str(site), "--db", str(site / "m.sqlite"), *extra]) == ExitCode.USAGE
        captured = capsys.readouterr()
        assert captured.out == "" and f"{name} would lie inside the site's root" in captured.err
        assert f"where: {where}" in captured.err
    assert main(["slurm-script", "--site", str(site), "--db", str(tmp_path / "m.sqlite")]) == 0
    assert "#SBATCH" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["report", "review"])
def test_out_never_replaces_the_manifest_it_reads_or_a_file_it_keeps_beside_it(manifest, tmp_path, capsys, command):
    """`report --db m.sqlite --out m.sqlite` replaced the manifest with the HTML page and said "wrote": every version
    it recorded was gone. The manifest, its SQLite side files (-wal, -journal), its lock, its state cache and its
    checkpoint folder are refused as --out (exit 2, nothing written), by any name that reaches them (a link to
    the folder), before any work."""
    import shutil

    folder = tmp_path / "site"
    folder.mkdir()
    db = folder / "m.sqlite"
    shutil.copy(manifest, db)
    kept = db.read_bytes()
    (folder / "m.sqlite.lock").write_bytes(b"")
    (folder / "m.sqlite.state.parquet").write_bytes(b"cache")
    (folder / "m.sqlite.checkpoint").mkdir()
    (tmp_path / "via").symlink_to(folder)
    targets = [db, tmp_path / "via" / "m.sqlite", folder / "m.sqlite-wal", folder / "m.sqlite-journal",
               folder / "m.sqlite.lock", folder / "m.sqlite.upload.lock", folder / "m.sqlite.state.parquet",
               folder / "m.sqlite.checkpoint" / "meta.json"]
    for target in targets:
        assert main([command, "--db", str(db), "--out", str(target)]) == ExitCode.USAGE, target
        err = capsys.readouterr().err
        assert "would replace or mix into what the manifest records" in err and "nothing was written" in err, err
        assert "Traceback" not in err and "wrote" not in err
    assert db.read_bytes() == kept
    assert (folder / "m.sqlite.state.parquet").read_bytes() == b"cache"
    assert not (folder / "m.sqlite-wal").exists() and not any((folder / "m.sqlite.checkpoint").iterdir())
    # a name that only begins like the manifest's is another file
    if command == "report":
        assert main(["report", "--db", str(db), "--out", str(folder / "m.sqlite.html")]) == 0
        assert (folder / "m.sqlite.html").read_bytes().startswith(b"<!DOCTYPE html>")


def test_out_never_lands_in_the_parquet_snapshot_folder_it_reads(tmp_path):
    """--db a `run --parquet` folder: an --out inside it (beside versions.parquet or in a version=... folder) is
    refused; a folder that holds no snapshot is no manifest, and a file in it is not this check's to refuse."""
    from chorus_batch.fsutil import check_not_manifest

    snaps = tmp_path / "snaps"
    (snaps / "version=1").mkdir(parents=True)
    for target in (snaps / "r.html", snaps / "version=1" / "r.html", snaps / "versions.parquet"):
        with pytest.raises(WriteError, match="inside the manifest's Parquet snapshot folder"):
            check_not_manifest(target, snaps)
    check_not_manifest(tmp_path / "r.html", snaps)
    (tmp_path / "plain").mkdir()
    check_not_manifest(tmp_path / "plain" / "r.html", tmp_path / "plain")


@posix_only
def test_a_file_the_shell_made_for_the_output_or_the_log_is_made_owner_only(manifest, tmp_path):
    """`validate --json > findings.json` and `run -v 2>> nightly.log` (or `upload --script bash > upload.sh`) went to
    a file the shell made with its umask: 0644 under 022, readable by all, naming each finding's file and each person
    folder. A regular file of this user's on stdout or stderr is made owner-only; a pipe or /dev/null is left."""
    import subprocess

    out, log = tmp_path / "findings.json", tmp_path / "nightly.log"
    for path in (out, log):
        path.write_bytes(b"")
        path.chmod(0o644)
    with open(out, "ab") as stdout, open(log, "ab") as stderr:
        done = subprocess.run([sys.executable, "-m", "chorus_batch", "validate", "--db", str(manifest), "--json", "-v"],
                              stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert done.returncode in (0, 1), log.read_text()
    assert '"findings"' in out.read_text() and log.read_text()
    assert (mode(out), mode(log)) == (0o600, 0o600)
    before = stat.S_IMODE(os.stat(os.devnull).st_mode)  # (a device: never changed, though this user may be root)
    subprocess.run([sys.executable, "-m", "chorus_batch", "versions", "--db", str(manifest)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert stat.S_IMODE(os.stat(os.devnull).st_mode) == before
