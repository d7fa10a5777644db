"""`upload --script bash|azcopy` and `mark-uploaded --from-log`: submission through the Azure CLI or
AzCopy, for sites whose security review allows only those tools.

The script sends what `upload` would send (each version's added, replaced and renamed files not yet
confirmed): the bash script one `az storage blob upload` per file, the AzCopy script one `azcopy copy` per batch of a
version's files read from one root (at most AZCOPY_BATCH; each AzCopy call costs its start-up and its 2 s progress
interval). Before each file is sent, the script checks its MD5 against the manifest's with
md5sum (a file changed since its version was recorded is skipped and named); `az storage blob upload`
gets the manifest's MD5 as --content-md5 and --validate-content (each chunk checked by the service), its blob
name and the local path from owner-only files (--name=@FILE, --file=@FILE), so that no person path is on its
command line (ps shows those to every user; AzCopy takes both only as arguments);
`azcopy copy` gets --put-md5 (AzCopy hashes what it sends and stores that); neither replaces a blob
already there (--overwrite false: mark-uploaded then records it only if it holds the manifest's size and
MD5). A file whose local path holds '*' is left out of an AzCopy script (AzCopy reads it as a wildcard,
with no escape) and named. The account is the endpoint the sign-in names ([azure] account_url, or the connection string's
BlobEndpoint / EndpointSuffix), never a secret. For each file a command sent, the script appends
`uploaded<TAB><blob name>` to its log: the Azure CLI's exit status says so of its one file; AzCopy's job record
(`azcopy jobs show JOB --with-status=All`) says it of each file of a batch (its exit status does not: one failed file
fails the call, and a listed file it cannot find is skipped with exit 0). The script holds no secret: both
tools sign in from the environment (`az login` / AZURE_STORAGE_* variables, `azcopy login` /
AZCOPY_* variables, or a SAS token in CHORUS_SAS that the script appends to AzCopy's URLs).

`mark-uploaded` reads that log and records a file version as uploaded only once the container shows
the blob with the manifest's size and MD5 as its Content-MD5.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

import polars as pl

from .. import release
from ..errors import ChorusError, ExitCode, UsageError
from ..store.uploads import CONFIRMED, CONFLICT_FIX, FINAL_NOT_SENT, PLAN_SCHEMA, UploadLedger, require_version
from ..times import iso, utc_now
from ..units import plural, shown_name, shown_text
from ..urls import local_path, shell_mask
from ..whole_script import whole_script_lines
from .central import Central, central_url, other_owner, parse_central, why_not_sent

if TYPE_CHECKING:
    from ..config import CloudSettings

LOG_NAME = "upload.log"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")  # what AzCopy cannot read in a local path ("invalid URL escape")


@dataclass
class Script:
    text: str
    n_files: int
    n_versions: int
    log: str
    n_not_replaceable: int = 0  # damaged blobs (verify) AzCopy cannot replace only if unchanged: left out
    wildcards: list[str] = field(default_factory=list)  # versioned names whose local path AzCopy reads as a pattern
    bad_names: list[tuple[str, str]] = field(default_factory=list)  # (versioned name, why): Azure cannot keep it
    n_superseded: int = 0  # replaced or removed by a later version before they were sent: nobody can send them
    # versioned names whose local path holds a '%' not followed by two hex digits: AzCopy parses a local path as a URL
    # path and fails the file ("invalid URL escape"), every time
    bad_escapes: list[str] = field(default_factory=list)
    earlier: list[str] = field(default_factory=list)  # --version: versions before it not completely uploaded (upload.py)


END_LINE = "# end of the chorus-batch upload script"  # the script's last line: a script without it was cut short

_CHECK = [  # the start of send: the file as its version recorded it (or it is not sent)
    '  if [ -n "$OTHER" ]; then echo "not sent (its folder $OTHER is another manifest\'s): $2" >&2; failed=1; return; fi',
    # The file's size and modification time before md5sum, compared after the send: a file written between the
    # check and the send went up with the manifest's MD5 as its Content-MD5 (the Azure CLI sets the one it is given;
    # the service checks it against the bytes only for a single put, not a large file's blocks) and was logged, so
    # mark-uploaded confirmed other bytes. (stat of stdin: the path on no command line, as for md5sum.)
    "  local seen",
    "  seen=$(stat -c '%s %y' - < \"$2\" 2> /dev/null)",
    '  if [ "$(md5sum < "$2" | cut -c1-32)" != "$3" ]; then',
    '    echo "not sent (changed since its version was recorded, or unreadable): $2" >&2; failed=1; return',
    "  fi",
]


def _logged(indent: str, name: str, local: str, seen: str) -> list[str]:
    """Log the blob `name` as uploaded when the file `local` still has the size and modification time `seen`
    (bash expressions); else say it changed while it was sent."""
    return [f"{indent}if [ -n \"{seen}\" ] && [ \"$(stat -c '%s %y' - < \"{local}\" 2> /dev/null)\" = \"{seen}\" ]; then",
            f"{indent}  printf 'uploaded\\t%s\\n' \"{name}\" >> \"$LOG\"",
            f"{indent}else",
            f'{indent}  echo "sent, but changed while it was checked and sent (its size or modification time): {local}; not logged as" \\',
            f'{indent}    "uploaded, so mark-uploaded does not record it (the next chorus-batch run records the change; an" \\',
            f'{indent}    "upload does not); its blob {name} may not" \\',
            f'{indent}    "hold the bytes of the manifest\'s MD5 (chorus-batch deletes nothing at the centre): have it removed" >&2; failed=1',
            f"{indent}fi"]


def _bash_send() -> list[str]:
    """send for the Azure CLI: one `az storage blob upload` a file."""
    return [
        "send() {  # blob-name local-file md5-hex md5-base64 url-quoted-name [etag of a damaged blob to replace]",
        *_CHECK,
        "  local how err",
        "  signin",
        "  local cond=(--overwrite false)  # never over a blob, but one verify found damaged, unchanged since",
        '  if [ -n "${6:-}" ]; then cond=(--overwrite true --if-match="$6"); fi',
        # The blob's name and the local file go on no command line (ps shows every process's to every user of the
        # machine, and both name the person): the Azure CLI reads a value given as `@FILE` from that file (its own
        # feature), here the owner-only $NAME and $LOCAL. (Not /dev/stdin: Git Bash hands a native az.exe no such
        # path.)
        "  printf '%s' \"$1\" > \"$NAME\"; printf '%s' \"$2\" > \"$LOCAL\"",
        '  if err=$(az storage blob upload --only-show-errors "${cond[@]}" --validate-content ${how[@]+"${how[@]}"} \\',
        # --opt=VALUE: the Azure CLI (argparse) takes a VALUE starting with '-' (a blob under a prefix
        # "-x/") for an option of its own and fails the file ("expected one argument").
        '      --container-name="$CONTAINER" --name=@"$NAME" --file=@"$LOCAL" --content-md5="$4" 2>&1 > /dev/null) \\',
        '      || sent "$@"; then',
        *_logged("    ", "$1", "$2", "$seen"),
        "  else",
        '    printf \'%s\\n\' "$err" | mask >&2; echo "failed: $2" >&2; failed=1',  # (what the Azure CLI said, then the file)
        "  fi",
        "}",
    ]


# Files an AzCopy call sends at most. Each call costs AzCopy's start-up and its 2 s progress interval whatever it sends:
# one a file took 5.5 hours of 10,000 files. (A cap keeps the queue, its list file and its job's listing small.)
AZCOPY_BATCH = 10_000


def _azcopy_batches() -> list[str]:
    """send, batch and flush for AzCopy: the files of a source folder (a root) and a version folder at the centre go up
    in one `azcopy copy ROOT DEST --list-of-files LIST --as-subdir=false`, each one's blob DEST/<its path in ROOT>
    (its version's blob name). What was sent is read from AzCopy's own record of the job, file by file (`azcopy jobs
    show JOB --with-status=All`): its exit status says nothing of a listed file it did not find (it is skipped with an
    INFO line, exit 0), and one failed file fails the call of all the others."""
    return [
        f"BATCH_MAX={AZCOPY_BATCH}",
        "B_ROOT='' B_DEST=''  # the batch's source folder and its url-quoted version folder at the centre",
        "B_NAME=() B_LOCAL=() B_SEEN=()  # its files: blob name, local path, size and modification time when checked",
        "batch() {  # source-folder url-quoted-destination-folder: where the files sent next are read from and go",
        "  flush",
        '  B_ROOT=$1 B_DEST=$2',
        "}",
        "send() {  # blob-name local-file md5-hex md5-base64 url-quoted-name: checked now, sent by flush",
        *_CHECK,
        '  B_NAME+=("$1"); B_LOCAL+=("$2"); B_SEEN+=("$seen")',
        '  if [ "${#B_NAME[@]}" -ge "$BATCH_MAX" ]; then flush; fi',
        "}",
        "flush() {  # send the batch in one AzCopy call; log each file AzCopy's job record shows as sent",
        "  local n=${#B_NAME[@]}",
        '  if [ "$n" = 0 ]; then return 0; fi',
        "  local i out job azlog first='' why line src status key",
        "  local -A ok=() listed=()",
        # (paths in the source folder, one a line; AzCopy reads them as they are: no '*' wildcard, no URL escapes)
        '  printf \'%s\\n\' "${B_LOCAL[@]#"${B_ROOT%/}/"}" > "$LIST"',
        # --from-to: AzCopy guesses the kind of a destination from its host, and gives up (every file failed) at an
        # endpoint it does not know: Azurite, Azure Stack, a custom domain. --as-subdir=false: the files go under
        # DEST as their paths in ROOT, not under DEST/<ROOT's name>/.
        '  out=$(azcopy copy "$B_ROOT" "$ACCOUNT_URL/$CONTAINER/$B_DEST${CHORUS_SAS:+?$CHORUS_SAS}" --from-to LocalBlob \\',
        '      --put-md5 --overwrite false --list-of-files "$LIST" --as-subdir=false --output-type text \\',
        "      --log-level ERROR 2>&1)",
        "  job=$(printf '%s\\n' \"$out\" | sed -n 's/^Job \\([0-9A-Za-z-]*\\) has started$/\\1/p' | head -n 1)",
        "  azlog=$(printf '%s\\n' \"$out\" | sed -n 's/^Log file is located at: //p' | head -n 1)",
        # Each transfer of the job: 'transfer--> source: PATH destination: URL status STATUS' (the URL is escaped: no
        # space in it). Sent: Success; or the blob was there already (--overwrite false), as a file's own call left it
        # (a run stopped before it logged): mark-uploaded records it only if it holds the manifest's size and MD5.
        '  if [ -n "$job" ]; then',
        "    while IFS= read -r line; do",
        "      case $line in 'transfer--> source: '*) ;; *) continue ;; esac",
        "      status=${line##* status }; src=${line#'transfer--> source: '}; src=${src% destination: *}",
        # (by the path with '/' for '\\' on both sides: AzCopy on Windows may write C:\\site\\... of C:/site/...; no
        # blob name holds a '\\', check_names refuses it)
        "      src=${src//\\\\//}",
        '      listed["$src"]=$status',
        '      case $status in Success | SkippedEntityAlreadyExists) ok["$src"]=1 ;; esac',
        '    done < <(azcopy jobs show "$job" --with-status=All --output-type text 2> /dev/null)',
        "  fi",
        # AzCopy says why only in its log: the file's error line (AzCopy writes the SAS there as sig=-REDACTED-), or
        # the log's first, or what it printed last; and where the log is.
        '  if [ -n "$azlog" ]; then first=$(grep -m 1 \' ERR: \' "$azlog" 2>/dev/null | sed \'s/^.* ERR: \\[[^]]*\\] //\'); fi',
        "  if [ -z \"$first\" ]; then first=$(printf '%s\\n' \"$out\" | grep -v '^ *$' | tail -n 1); fi",
        '  local nfailed=0',
        '  for ((i = 0; i < n; i++)); do',
        '    key=${B_LOCAL[i]//\\\\//}',
        '    if [ -n "${ok["$key"]+x}" ]; then',
        *_logged("      ", "${B_NAME[i]}", "${B_LOCAL[i]}", "${B_SEEN[i]}"),
        "      continue",
        "    fi",
        "    why=''",
        '    if [ -n "$job" ] && [ -z "${listed["$key"]+x}" ]; then',
        '      why="AzCopy\'s job $job did not send it (it lists no transfer of it: gone, or not a regular file, when AzCopy looked)"',
        '    elif [ -n "$azlog" ] && [ "$nfailed" -lt 20 ]; then  # (the first files\' own error lines: each a pass of the log)',
        "      why=$(grep -F -m 1 -- \"UPLOADFAILED: ${B_LOCAL[i]} : \" \"$azlog\" 2>/dev/null | sed 's/^.* ERR: \\[[^]]*\\] //')",
        "    fi",
        "    why=$(printf '%s' \"${why:-$first}\" | mask); nfailed=$((nfailed + 1))",
        '    echo "failed: ${B_LOCAL[i]}: ${why:-AzCopy said nothing}${azlog:+ (AzCopy log: $azlog)}" >&2; failed=1',
        "  done",
        "  B_NAME=() B_LOCAL=() B_SEEN=()",
        "}",
    ]


def _local_roots(manifest, overrides: dict[str | None, str] | None) -> dict[int, str]:
    roots = {}
    for root_id, location, modality in manifest.roots().select("root_id", "location", "modality").iter_rows():
        location = (overrides or {}).get(modality, location)
        path = local_path(location, "the manifest's roots")
        if path is None:
            raise UsageError(f"`upload --script` reads files from local folders; this root is {location}",
                             where="the manifest's roots", fix="upload from cloud roots with `chorus-batch upload` itself")
        # The script is run later, maybe from another folder (cron, `bash /path/upload.sh`): a relative --site
        # (./site/) wrote relative paths into it, every file 'missing' wherever else it was run.
        roots[root_id] = os.path.abspath(path)
    return roots


def write_script(db: str, to: str, *, kind: str, cloud: CloudSettings, version: str | None = None,
                 modalities: Sequence[str] | None = None, site: str | None = None,
                 site_roots: dict[str, str] | None = None) -> Script:
    """The bash script of `kind` ('bash': az storage blob upload; 'azcopy': azcopy copy). `site` (--site: the site
    moved) with `site_roots` ([site.roots] of the config): the roots the files are read from, as `upload` takes them."""
    from ..sources.cloud import azure_sign_in, blob_endpoint
    from ..store import Manifest
    from ..store.remote import is_remote, read_copy
    from .upload import refuse_empty_root

    container, prefix = parse_central(to)
    url = central_url(to)
    manifest = Manifest(read_copy(db, cloud) if is_remote(db) else db)
    manifest.require()
    ledger = UploadLedger(manifest, url)
    if version is not None:
        require_version(manifest, version)
    from .upload import earlier_than

    waiting = ledger.versions_not_finished()
    labels = [version] if version is not None else waiting
    # (as `upload` reads them: with --site, [site.roots] too; it took --site alone, and a moved modality root was
    # read from where it had been, "not there" whatever was given)
    roots = _local_roots(manifest, {None: site, **(site_roots or {})} if site else None)
    modality_of = dict(manifest.roots().select("root_id", "modality").iter_rows())
    # (none: every version is recorded as completely uploaded there; a script that sends nothing)
    plans = [ledger.plan(label, modalities) for label in labels] or [pl.DataFrame(schema=PLAN_SCHEMA)]
    # As `upload` would send them: not confirmed (or found damaged by verify), and with a name Azure keeps.
    unsent = pl.concat(plans).filter(~pl.col("state").is_in(CONFIRMED) | pl.col("state").is_null() | pl.col("damaged"))
    n_superseded = unsent.filter(pl.col("superseded")).height  # named: the script's count alone hid them
    todo = unsent.filter(~pl.col("superseded") & pl.col("md5").is_not_null()).with_columns(
        bad_name=why_not_sent(pl.col("srcfile"), pl.col("version"), prefix))
    # Left out, as `upload` leaves them out, but named: the script's count alone hid them (and the run said 0).
    bad_names = [(f"{label}/{srcfile}", why) for label, srcfile, why in
                 todo.filter(pl.col("bad_name").is_not_null()).select("version", "srcfile", "bad_name").iter_rows()]
    todo = todo.filter(pl.col("bad_name").is_null())
    # A blob verify found damaged is replaced only if it is still the one verify saw (its etag): the Azure CLI
    # can say so (--if-match); AzCopy cannot, so those are left to `upload` or the bash script.
    not_replaceable = todo.filter(pl.col("replace_etag").is_not_null()).height if kind == "azcopy" else 0
    if not_replaceable:
        todo = todo.filter(pl.col("replace_etag").is_null())
    if todo["root_id"].is_null().any():
        if len(roots) != 1:
            raise UsageError("some files were committed before the manifest recorded where they are", where=db,
                             fix="run `chorus-batch run` once (it records the roots), then write the script")
        todo = todo.with_columns(pl.col("root_id").fill_null(next(iter(roots))))
    for root_id in todo["root_id"].unique().to_list():  # up front, as upload checks them: not one failure a file
        modality = modality_of.get(root_id)
        # a modality's root is named as such: --site does not move it, [site.roots] (read with --site) does
        where = (("--site" if site else "the manifest's roots") if modality is None
                 else f"[site.roots] {modality}" + ("" if site else " (as the manifest records it)"))
        if not os.path.isdir(roots[root_id]):
            raise UsageError(f"the folder the files are read from is not there (moved, or not mounted?): {roots[root_id]}",
                             where=where,
                             fix="mount it, or give the site's folder as it is now with --site DIR" if modality is None
                             else f"mount it, or give --site DIR with [site.roots] {modality} in chorus.toml naming "
                                  "the folder as it is now")
        refuse_empty_root(roots[root_id], where, db)
    sign_in = azure_sign_in(cloud, url=to, what="--to / [central] to")
    account_url = blob_endpoint(sign_in)
    lines = [
        "#!/usr/bin/env bash",
        f"# Written by chorus-batch {release()} at {iso(utc_now())}: {plural(todo.height, 'file')} of "
        f"{plural(len(labels), 'version')} of {Path(manifest.path).resolve()} to {url}.",
        "# Each file is checked against its manifest MD5 (md5sum) and then sent; each one sent is logged as",
        "# 'uploaded<TAB><blob name>' in $LOG. Afterwards record them: chorus-batch mark-uploaded --from-log $LOG",
        ("# Sign-in: `az login` (then AZ_AUTH_MODE=login), or AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_SAS_TOKEN"
         " / AZURE_STORAGE_KEY with AZURE_STORAGE_ACCOUNT, in the environment." if kind == "bash" else
         "# Sign-in: `azcopy login`, AzCopy's AZCOPY_* variables, or a SAS token (without '?') in CHORUS_SAS, which"
         "\n# AzCopy takes only in its URLs: other users of the machine can read it in the process list (ps)."),
        "set -u",
        # (part of the files sent by a script cut short while it was written: whole_script)
        *whole_script_lines(
            END_LINE, what="this upload script", cut_effect="sends part of the files", nothing="nothing was sent",
            save="save it to a file and run that: chorus-batch upload --script ... > upload.sh && bash upload.sh",
            again="chorus-batch upload --script"),
        "UMASK_BEFORE=$(umask)  # (given back at the end when pasted into an interactive shell)",
        "umask 077  # $LOG names each file sent, person ids with them: owner-only, whatever the caller's umask",
        f'LOG="${{CHORUS_UPLOAD_LOG:-{LOG_NAME}}}"',
        # (a log kept from an earlier run, made under umask 022 before this line was there or copied back from a backup,
        # was appended to as it was: readable by all)
        'if [ -f "$LOG" ] && [ -O "$LOG" ]; then chmod go= -- "$LOG" 2>/dev/null || true; fi',
        # (a line an earlier run left cut short, the disk full or the run stopped mid-write, is ended first: the next
        # line logged was joined to it, and mark-uploaded read the two as one name of no file, a sent file unrecorded)
        'if [ -s "$LOG" ] && [ -n "$(tail -c 1 -- "$LOG" 2> /dev/null)" ]; then printf \'\\n\' >> "$LOG"; fi',
        f"CONTAINER={shlex.quote(container)}",
        f"ACCOUNT_URL={shlex.quote(account_url)}",
        f"ACCOUNT={shlex.quote(sign_in.account_name or '')}",
        "failed=0",
        # The claim `upload` writes in a version folder before its first file (central.py, CLAIM_NAME): without it a
        # script mixed its files into another manifest's upload under way there, and another upload into this one's.
        'EMPTY=$(mktemp) || exit 1',
        # (the blob name and the local path of the file being sent, owner-only: the Azure CLI reads them with
        # --name=@FILE and --file=@FILE, so that the person paths are on no command line, which every user of the
        # machine reads in ps)
        'NAME=$(mktemp) || exit 1',
        'LOCAL=$(mktemp) || exit 1',
        "LIST=$(mktemp) || exit 1  # (AzCopy's --list-of-files: the files of one call, by their path in its folder)",
        "trap 'rm -f \"$EMPTY\" \"$NAME\" \"$LOCAL\" \"$LIST\"' EXIT",
        "OTHER=''  # the version folder being sent to is another manifest's: nothing is added to it",
        # (what the Azure CLI and AzCopy say of a refused file quotes the request: its SAS, a key, printed as it was)
        *shell_mask(("AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
                     "AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_SECRET", "CHORUS_SAS")),
    ]
    if kind == "bash":
        lines += [
            "signin() {  # the account by name, unless a connection string names it",
            "  how=()",
            '  if [ -z "${AZURE_STORAGE_CONNECTION_STRING:-}" ] && [ -n "$ACCOUNT" ]; then how+=(--account-name "$ACCOUNT"); fi',
            '  if [ -n "${AZ_AUTH_MODE:-}" ]; then how+=(--auth-mode "$AZ_AUTH_MODE"); fi',
            "}",
            "folder() {  # folder-name url-quoted-folder manifest-id: claim it (where nobody has), then whose it is",
            "  OTHER=''",
            "  local how who='' marker",
            "  signin",
            '  az storage blob upload --only-show-errors --overwrite false ${how[@]+"${how[@]}"} --container-name="$CONTAINER" \\',
            '      --name="$1/_manifest/owner" --file="$EMPTY" --metadata "chorus_manifest_id=$3" > /dev/null 2>&1',
            "  for marker in manifest.sqlite owner; do  # the finished submission's copy first, then the claim",
            '    if who=$(az storage blob metadata show --only-show-errors ${how[@]+"${how[@]}"} --container-name="$CONTAINER" \\',
            '        --name="$1/_manifest/$marker" --query chorus_manifest_id -o tsv 2> /dev/null); then break; fi',
            "  done",
            '  if [ -n "$who" ] && [ "$who" != "$3" ]; then',
            '    OTHER="$1/"',
            '    echo "not sent: $1/ at the centre is another manifest\'s submission or upload (its _manifest/$marker names' +
            ' manifest $who): nothing is added to it; give this site its own place (--to az://<container>/<prefix>/)" >&2',
            "    failed=1",
            "  fi",
            "}",
        ]
    else:
        lines += [
            "folder() {  # folder-name url-quoted-folder manifest-id: claim it where nobody has (AzCopy cannot read a",
            "  # blob's metadata back: mark-uploaded says whose folder it is, and records nothing in another's)",
            "  OTHER=''",
            '  azcopy copy "$EMPTY" "$ACCOUNT_URL/$CONTAINER/$2/_manifest/owner${CHORUS_SAS:+?$CHORUS_SAS}" --from-to LocalBlob \\',
            '      --overwrite false --metadata "chorus_manifest_id=$3" --log-level ERROR > /dev/null 2>&1',
            "  return 0",
            "}",
        ]
    if kind == "bash":
        # A run of this script killed between a file's upload and its log line left a blob that `--overwrite false`
        # refuses on every later run ("The specified blob already exists"), and that no log names: the file failed for
        # ever. A blob already there with the manifest's Content-MD5 is that file (mark-uploaded checks it again).
        lines += [
            "sent() {  # the arguments of send: the blob is there, sent by an earlier run of this script",
            '  [ -z "${6:-}" ] && [ "$(az storage blob show --only-show-errors ${how[@]+"${how[@]}"} --container-name="$CONTAINER" \\',
            '      --name=@"$NAME" --query properties.contentSettings.contentMd5 -o tsv 2> /dev/null)" = "$4" ]',
            "}",
        ]
    if kind == "azcopy":
        lines += _azcopy_batches()
    else:
        lines += _bash_send()
    if kind == "azcopy":
        # AzCopy takes a SAS only in its URL (no variable, no file: Azure/azure-storage-azcopy#2138): on a shared node
        # other users read it from the process list while each file is sent. Said before the first one.
        lines += [
            'if [ -n "${CHORUS_SAS:-}" ]; then',
            '  echo "warning: AzCopy takes a SAS token only in its URL: CHORUS_SAS is on each azcopy command line," \\',
            '    "which other users of this machine can read (ps, /proc) while it runs. Where that matters, sign in with" \\',
            '    "\\`azcopy login\\` or AZCOPY_AUTO_LOGIN_TYPE (MSI, SPN, AZCLI) instead, or write the script with" \\',
            '    "--script bash (the Azure CLI reads AZURE_STORAGE_SAS_TOKEN from the environment)." >&2',
            "fi",
        ]
    wildcards: list[str] = []
    bad_escapes: list[str] = []
    manifest_id = manifest.state_identity()[0]
    folder = batch = None
    for label, srcfile, md5, root_id, etag in todo.select("version", "srcfile", "md5", "root_id",
                                                          "replace_etag").iter_rows():
        if label != folder and manifest_id:  # before the version's first file, as `upload` claims it
            folder = label
            where = "/".join(p for p in (prefix, label) if p)
            lines.append(f"folder {shlex.quote(where)} {shlex.quote(quote(where))} {shlex.quote(str(manifest_id))}")
        name = "/".join(p for p in (prefix, label, srcfile) if p)
        local = str(PurePosixPath(roots[root_id]) / srcfile)
        if kind == "azcopy" and "*" in local:
            # AzCopy reads '*' in a local path as a wildcard and has no escape for it: `st*r.csv` would send
            # every file the pattern matches, as blobs under a folder named st*r.csv. Left out, and named.
            wildcards.append(f"{label}/{srcfile}")
            continue
        if kind == "azcopy" and _BAD_ESCAPE.search(local):
            bad_escapes.append(f"{label}/{srcfile}")
            continue
        if kind == "azcopy" and (root_id, label) != batch:  # one AzCopy call per source folder and version folder
            batch = (root_id, label)
            where = "/".join(p for p in (prefix, label) if p)
            lines.append(f"batch {shlex.quote(roots[root_id])} {shlex.quote(quote(where))}")
        b64 = base64.b64encode(bytes.fromhex(md5)).decode()
        lines.append(f"send {shlex.quote(name)} {shlex.quote(local)} {md5} {shlex.quote(b64)} "
                     f"{shlex.quote(quote(name))}" + (f" {shlex.quote(etag)}" if etag else ""))
    # Pasted into an interactive shell, its `exit` closed the user's terminal (an ssh session, with it) and what the
    # script had said of files not sent went with it; set -u and umask 077 stayed in that shell. There, it ends without
    # an exit and gives the shell back as it was.
    if kind == "azcopy":
        lines.append("flush  # the last batch")
    lines += ["case $- in",
              '  *i*) rm -f "$EMPTY" "$NAME" "$LOCAL" "$LIST"; trap - EXIT; set +u; umask "$UMASK_BEFORE"',
              '    if [ "$failed" != 0 ]; then echo "upload script: some files were not sent (said above); the others are'
              ' logged in $LOG" >&2; else echo "upload script: every file was sent and logged in $LOG" >&2; fi ;;',
              '  *) exit "$failed" ;;',
              "esac", END_LINE, ""]
    return Script("\n".join(lines), todo.height - len(wildcards) - len(bad_escapes), len(labels), LOG_NAME,
                  not_replaceable, wildcards, bad_names, n_superseded, bad_escapes, earlier_than(version, waiting))


@dataclass
class Marked:
    central: str
    n_recorded: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (blob name, why)
    not_understood: int = 0  # log lines that are not `uploaded<TAB><blob name>`
    example: str = ""  # the first of them
    n_superseded: int = 0  # files replaced or removed by a later version before they were sent: recorded so
    # logged blobs the ledger held as confirmed already (the script's log is appended to by every run): left as they
    # were; recording them again reset their verification and said they were recorded now
    n_before: int = 0
    # versions whose folder at the centre is another manifest's (its copy or claim says so): what the script sent
    # there was mixed into that manifest's submission, and is not recorded as this one's
    foreign: list[str] = field(default_factory=list)
    # versions of which files are still not recorded as at the centre (a log cut short, a script stopped, files it
    # could not send): (label, not recorded, files); it said only "upload then finds nothing left to send"
    waiting: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.foreign:  # as upload: another manifest's folder is refused, not a finding to run again for
            return ExitCode.REFUSED
        # nothing recorded is a finding too: a wrong or empty log must not look like a success
        return (ExitCode.FINDINGS if self.rejected or self.not_understood or not (self.n_recorded or self.n_before)
                else ExitCode.OK)

    def text(self) -> str:
        lines = [f"recorded {plural(self.n_recorded, 'upload')} confirmed at {self.central} in the uploads ledger"
                 + (f"; {plural(self.n_before, 'more logged blob')} {'was' if self.n_before == 1 else 'were'} recorded before (left as {'it is' if self.n_before == 1 else 'they are'})"
                    if self.n_before else "")]
        if self.not_understood:
            lines.append(f"not understood: {plural(self.not_understood, 'line')} of the log {'is' if self.not_understood == 1 else 'are'} not `uploaded<TAB><blob name>` "
                         f"as the upload script writes them (first, {self.example}); is it that script's log?")
        if not self.n_recorded and not self.n_before and not self.rejected:
            lines.append("warning: the log names no blob the upload script sent: nothing was recorded (pass the log "
                         "of a script run that sent files)")
        if self.rejected:
            lines.append(f"not recorded: {len(self.rejected)}")
            lines += [f"  {shown_name(name)}: {shown_text(why)}" for name, why in self.rejected[:20]]
            if len(self.rejected) > 20:
                lines.append(f"  ... {len(self.rejected) - 20} more")
        if self.n_superseded:
            lines.append(f"recorded {plural(self.n_superseded, 'file')} as superseded: a later version replaced, renamed or "
                         f"removed {'it' if self.n_superseded == 1 else 'them'} before {'it was' if self.n_superseded == 1 else 'they were'} sent (their bytes are no longer at that path in the site; a "
                         "file that replaced one, or its new name, goes with that later version)")
        for label, n, files in self.waiting:
            lines.append(f"version {label}: {n} of its {plural(files, 'file')} {'is' if n == 1 else 'are'} not recorded as "
                         "at the centre yet (not in this log, or not there as the manifest has them): run the script "
                         "again, or `chorus-batch upload` (same --db and --to), to send them")
        lines.append("`chorus-batch upload` then finds nothing left to send for a complete version: it checks it and "
                     "puts the manifest's copy next to it")
        return "\n".join(lines)


def mark_uploaded(db: str, to: str, log_path: str, *, cloud: CloudSettings, argv: Sequence[str] = ()) -> Marked:
    """Record the blobs a script's log names, each once the container shows its size and Content-MD5."""
    from .upload import _working_manifest, container_gone, record_unsendable, sort_plan
    from .uploadlog import read_log

    log = read_log(log_path, parse_central(to)[1], central_url(to))
    prefix = parse_central(to)[1]

    def blob(label: str, srcfile: str) -> str:  # the name as the log holds it
        return f"{prefix}/{label}/{srcfile}" if prefix else f"{label}/{srcfile}"

    central = Central(to, cloud)
    marked = Marked(central.url, rejected=[], not_understood=log.not_understood, example=log.example)
    ledger = None
    try:
        with _working_manifest(db, cloud, argv, read_only=False) as manifest:
            ledger = UploadLedger(manifest, central.url)
            mine = str(manifest.state_identity()[0])
            by_version = {label: group["srcfile"].to_list()
                          for (label,), group in log.names.group_by("label", maintain_order=True)}
            # (before anything is recorded, whatever the log holds: an empty one recorded the superseded files as the
            # uploads of a container that is not there)
            central.check(write=False)
            # A line a later run ended and logged after, cut short in the version label: the start of one of its blob
            # names (a cut srcfile is found against its version's change set below)
            folders = manifest.query_frame("SELECT label FROM versions", schema={"label": pl.String})["label"]
            folders = (prefix + "/" if prefix else "") + folders + "/"
            logged = pl.Series([name for name, _ in log.invalid], dtype=pl.String)
            log.ended_cut(logged, folders)
            log.ended_cut(logged.filter(logged.is_in(folders.implode())), folders + "x")  # ("<version>/": no name yet)
            marked.rejected += [(name, log.cut_short(name, why)) for name, why in log.invalid]
            for label, srcfiles in by_version.items():
                if manifest.query_frame("SELECT label FROM versions WHERE label = ?", (label,)).height == 0:
                    log.ended_cut(blob(label, "") + pl.Series(srcfiles, dtype=pl.String), folders)
                    marked.rejected += [(f"{label}/{s}", log.cut_short(blob(label, s), f"the manifest has no version {label}"))
                                        for s in srcfiles]
                    continue
                # Whose folder it is, as upload asks before its first file (and claimed for this manifest if nobody's):
                # a script sent into another manifest's submission or upload under way, and mark-uploaded recorded
                # those blobs as this manifest's, whose copy then listed files of two sites.
                fingerprint = UploadLedger(manifest, central.url).version_fingerprint(label)
                owner = other_owner(central.folder_owner(label, "look at", claim_as=mine, fingerprint=fingerprint), mine,
                                    fingerprint)
                if owner is not None:
                    marked.foreign.append(label)
                    marked.rejected += [(f"{label}/{s}", f"{label}/ at the centre {owner.described()}: not recorded as "
                                         f"this manifest's (the script's blob is mixed into that submission); "
                                         f"{CONFLICT_FIX}") for s in srcfiles]
                    continue
                whole = ledger.plan(label)
                plan = whole.filter(pl.col("srcfile").is_in(srcfiles))
                unknown = set(srcfiles) - set(plan["srcfile"].to_list())
                folder = blob(label, "")
                log.ended_cut(folder + pl.Series(sorted(unknown), dtype=pl.String), folder + whole["srcfile"])
                marked.rejected += [(f"{label}/{s}", log.cut_short(blob(label, s), "not in that version's change set"))
                                    for s in sorted(unknown)]
                listing = central.listing(label).rename({"name": "srcfile"})
                checked = plan.join(listing, on="srcfile", how="left")
                good = checked.filter((pl.col("size") == pl.col("size_right")) & (pl.col("content_md5") == pl.col("md5")))
                bad = checked.join(good.select("file_id"), on="file_id", how="anti")
                # confirmed before (and not found damaged since): its row, with verify's finding, stays as it is
                before = good.filter(pl.col("state").is_in(CONFIRMED) & ~pl.col("damaged"))
                good = good.join(before.select("file_id"), on="file_id", how="anti")
                marked.n_before += before.height
                for srcfile, size, blob_size in bad.select("srcfile", "size", "size_right").iter_rows():
                    # (a blob of that name, not as the manifest has it: the name is whole, even on a cut line)
                    marked.rejected.append((f"{label}/{srcfile}", log.cut_short(blob(label, srcfile), "not in the container")
                                            if blob_size is None else "its size or Content-MD5 is not the manifest's"))
                ledger.start(label)
                ledger.record([{"version": label, "file_id": file_id, "destination": central.destination(label, srcfile),
                                "state": "uploaded", "uploaded_at": iso(utc_now()), "bytes": size, "md5": md5,
                                "etag": etag, "confirmed_by": "listing", "attempts": 1, "last_error": None}
                               for file_id, srcfile, size, md5, etag in
                               good.select("file_id", "srcfile", "size", "content_md5", "etag").iter_rows()])
                marked.n_recorded += good.height
            # What `upload` records before it sends: files nobody can send any more (superseded: a later version
            # replaced or removed them first; bad names; no MD5). The script leaves them out, so without this a
            # version of only such files was never marked and showed as never uploaded.
            for label in ledger.versions_not_finished():
                immediate = sort_plan(ledger, label, None, central.prefix)[2]
                if immediate.height:
                    ledger.start(label)
                    record_unsendable(ledger, central, label, immediate)
                    marked.n_superseded += immediate.filter(pl.col("state") == "superseded").height
                if label in marked.foreign:
                    continue
                # what still waits: neither confirmed (nor damaged since) nor superseded, as upload counts it
                plan = ledger.plan(label)
                left = plan.filter(~pl.col("state").fill_null("").is_in([*CONFIRMED, *FINAL_NOT_SENT])
                                   | pl.col("damaged")).height
                if left:
                    marked.waiting.append((label, left, plan.height))
    except ChorusError as exc:  # (the container, sign-in or manifest failed: said with what the ledger holds)
        if ledger is not None:
            container_gone(exc, ledger)
        exc.outcome = (f"{plural(marked.n_recorded, 'logged upload')} {'was' if marked.n_recorded == 1 else 'were'} recorded in the manifest's uploads ledger before "  # type: ignore[attr-defined]
                       "this; run the same command again once this is fixed (what was recorded is left as it is)")
        raise
    finally:
        central.close()
    return marked
