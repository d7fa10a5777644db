"""The rules on the site's layout: top-level and person folders, person folders against
person.csv, and file-wide rules (names naming another person, unparsed paths, empty and
duplicated files). _superseded, _no_folder and _duplicates look across person folders: they run
once, after every part (checks.py)."""

from __future__ import annotations

import polars as pl

from ..frames import fmt, shown
from ..classify import CURRENT, LOCAL_ONLY_FIX, LOCAL_ONLY_WHY, SUPERSEDED
from ..partitions import top_folder
from ..units import plural
from .rules import AS_NUMBER
from .site import _Across, _as_integer, _counted_list, _first_of, _found, _join_list, _one, _Site, _written_as


def _layout(site: _Site) -> list[pl.LazyFrame]:
    f, folders = site.files.lazy(), site.folders  # (lazy: each rule reads a few of the files' columns)
    out = [
        _found("file.compressed", f.filter(pl.col("_compressed")), "srcfile",
               fmt("a compressed file or archive (.{}): the procedures ask for the files themselves (CSV tables, "
                   "registries and mappings, WFDB records, DICOM images, markdown), and nothing reads inside an "
                   "archive; decompress it in place (e.g. gunzip) and remove the compressed copy",
                   pl.col("_name").str.extract(r"\.([^.]+)$"))),
        _found("layout.identifiable_table", f.filter(pl.col("_local_only")), "srcfile",
               pl.lit(f"{LOCAL_ONLY_WHY}; it would be uploaded with the site's files: {LOCAL_ONLY_FIX}")),
        _found("layout.root_file", f.filter((pl.col("_n") == 1) & pl.col("parse_error").is_not_null()
                                            & ~pl.col("_compressed") & ~pl.col("_local_only")), "srcfile",
               pl.lit("file in the site root: move it into OMOP/, Metadata/ or its person folder (only the linkage "
                      "registries belong at the root)")),
        _found("layout.unexpected_folder", folders.filter(~pl.col("_is_person")), pl.col("_top") + "/",
               # a person's data folder put at the root: told where it belongs, not to be removed
               pl.when(pl.col("_top").str.to_lowercase().is_in(["waveforms", "images"])).then(fmt(
                   "{}/ lies at the site root: the procedures keep each person's {} in that person's folder "
                   "(<person_id>/{}/...); move its files into the person folders", pl.col("_top"),
                   pl.col("_top").str.to_lowercase(), pl.col("_top")))
               # a submission's root inside the site (a dated release folder): where the site's root is, or a copy
               .when(pl.col("_release") & pl.lit(site.omop_dir is None)).then(fmt(
                   "{}/ is a submission's root, such as a dated release folder, not a person folder: it holds an "
                   "OMOP/ folder and the site root none; check and run on {}/ itself (--site ending in /{}, or [site] "
                   "root in chorus.toml)", pl.col("_top"), pl.col("_top"), pl.col("_top")))
               .when(pl.col("_release")).then(fmt(
                   "{}/ holds an OMOP/ folder of its own: a copy of a submission (such as an earlier dated release) "
                   "inside the site, tracked and uploaded again under {}/; keep copies of releases outside the site's "
                   "folder", pl.col("_top"), pl.col("_top")))
               .otherwise(pl.lit("top-level folder is not OMOP/, Metadata/ or a person folder (no Images/, "
                                 "Waveforms/ or Metadata/ inside, and not a person_id in person.csv): move or remove it"))),
        # OMOP/ or Metadata/ spelled otherwise (omop/, METADATA/): read as those, and told nothing, though every edition
        # of the procedures spells them so and the centre's storage compares paths letter case and all
        _found("layout.unexpected_folder", f.filter((pl.col("_n") >= 2) & pl.col("_top_l").is_in(["omop", "metadata"])
                                                    & ~pl.col("_top").is_in(["OMOP", "Metadata"])).unique("_top"),
               pl.col("_top") + "/",
               fmt("{}/ at the site root: the procedures spell it {}/, and the centre's storage compares paths letter "
                   "case and all; rename it {}/", pl.col("_top"),
                   *[pl.col("_top_l").replace_strict({"omop": "OMOP", "metadata": "Metadata"})] * 2)),
        _found("layout.person_no_data", folders.filter(pl.col("_is_person") & ~pl.col("_has_data")),
               pl.col("_top") + "/",
               pl.lit("person folder has neither Images/ nor Waveforms/: add the person's data or remove the folder")),
        _found("layout.person_file", f.filter(pl.col("_person_file")), "srcfile",
               pl.lit("file lies directly in the person folder: move it into Images/ or Waveforms/ (site-wide "
                      "documents into the root Metadata/)")),
        # an Images/ folder spelled otherwise (images/, IMAGES/): no edition of the procedures did (unlike v2.0's
        # waveforms/, told by layout.superseded), and the centre's storage and the registries' trg_file compare paths
        # exactly; it was read as Images/ and told nothing
        _found("layout.person_subfolder", f.filter(pl.col("_person_subfolder")
                                                   | (pl.col("_images") & (pl.col("_second") != "Images")))
               .unique(["_top", "_second"]),
               fmt("{}/{}/", pl.col("_top"), pl.col("_second")),
               pl.when(pl.col("_second_l") == "images").then(fmt(
                   "{}/ in a person folder: the procedures spell it Images/, and the centre's storage compares "
                   "paths letter case and all (so do the registries' trg_file); rename it Images/", pl.col("_second")))
               .when(pl.col("_second_l") == "metadata").then(fmt(
                   "{}/ in a person folder: Metadata/ (READINESS.md, SUBMISSION.md, the mapping files) belongs at the "
                   "site root, once for the site; move its files into the root Metadata/ or remove them",
                   pl.col("_second")))
               # the per-person OMOP/ of earlier editions (Multimodal-Linkage: OMOP data "are no longer included in
               # the per-person file structure, as was recommended previously"): "remove it" lost the person's rows
               .when(pl.col("_second_l") == "omop").then(fmt(
                   "{}/ in a person folder: earlier editions kept each person's OMOP rows there; today the OMOP tables "
                   "are one snapshot of all persons in the root OMOP/, which no table here is read into: merge its "
                   "rows into the root OMOP/ tables, then remove it", pl.col("_second")))
               .otherwise(fmt("unknown folder {}/ in a person folder: only Images/ and Waveforms/ belong there; "
                              "move its files or remove it", pl.col("_second")))),
    ]
    return out


def _no_omop(site: _Site, across: _Across) -> list[pl.LazyFrame]:
    """layout.no_omop, once all parts are checked (every part holds the root's OMOP/; a folder holding one of its
    own, _release, lies in one part): where the site's root has no OMOP/ but a top-level folder does, that folder is
    the submission's root, and the site was checked from the folder above it."""
    if site.omop_dir is not None:
        return []
    # (a version records files, not folders: an OMOP/ folder left empty is no different here from none)
    releases = sorted(pl.concat([f.filter(pl.col("_release")).select("_top") for f in across.folders])["_top"])
    if not releases:
        return [_one("layout.no_omop", "OMOP/", "the site has no file in an OMOP/ folder (none, or an empty one): "
                                                "add OMOP/ with the CDM 5.4 tables as comma-delimited CSV files")]
    named = ", ".join(f"{top}/" for top in releases[:3]) + (f" and {len(releases) - 3} more" if len(releases) > 3
                                                             else "")
    return [_one("layout.no_omop", "OMOP/",
                 f"the site root has no OMOP/ folder, but {named} {'holds' if len(releases) == 1 else 'hold'} one: the "
                 f"site was checked from the folder above its root (a dated release folder is the root itself); "
                 f"check and run on {releases[-1]}/ (--site ending in /{releases[-1]}, or [site] root in chorus.toml)")]


def _superseded(current: pl.DataFrame) -> list[pl.LazyFrame]:
    """Files of the whole site that follow an earlier edition's layout, one finding per layout."""
    superseded = (
        current.lazy().filter(pl.col("layout").is_not_null() & (pl.col("layout") != CURRENT))
        .group_by("layout").agg(pl.col("srcfile").min(), pl.len().alias("_n_files"))
        .with_columns(_today=pl.col("layout").replace_strict(SUPERSEDED, default="", return_dtype=pl.String))
    )
    return [_found("layout.superseded", superseded, "srcfile", fmt(
        "{} file{|s} {follows|follow} a layout of an earlier edition of the procedures (e.g. this one), still accepted; "
        "today's form: {}", pl.col("_n_files"), pl.col("_today")))]


def _persons(site: _Site, across: _Across) -> list[pl.LazyFrame]:
    across.folders.append(site.folders)
    # The folder is named by the person_id (Multimodal-Linkage: "This id should also match the name of that files
    # parent directory"), which OMOP and the registries hold as an integer ("DATATYPE: integer or bigint");
    # [0-9], not \d: another script's digits are no OMOP integer
    ids = [_found(
        "person.id_format", site.folders.filter(pl.col("_is_person") & ~pl.col("_top").str.contains(r"^[0-9]+$")),
        pl.col("_top") + "/",
        fmt("person folder {} is not an integer id: it names the person_id, which OMOP and the linkage registries "
            "hold as an integer; give the person an integer person_id and use it for the folder, in person.csv, "
            "the registries and the DICOM PatientID", shown(pl.col("_top"))))]
    if site.person_ids is None:
        return ids  # no readable person.csv: omop.* says why
    # person_ids written as decimals (1.0: pandas writes an integer column with empty cells so) match no folder: said
    # where a folder's id is one of them, not "add the person", whose row is there
    # (or in scientific notation, 1.01e2, as a spreadsheet writes a large number)
    decimals = (site.person_ids.to_frame("_decimal").filter(pl.col("_decimal").str.contains(AS_NUMBER))
                .with_columns(_key=_as_integer(pl.col("_decimal"))).unique("_key"))
    missing = site.folders.filter(pl.col("_is_person") & ~pl.col("_in_omop")).join(decimals, on="_key", how="left")
    return [*ids, _found(
        "person.no_omop_row", missing.filter(pl.col("_decimal").is_null()), pl.col("_top") + "/",
        fmt("person folder {} has no row in {}{}: add the person to {} or fix the folder name",
            shown(pl.col("_top")), pl.lit(site.person_csv),
            # another script's digits (٠٠٠٠٤٢) look like an id, and some readers (Python's int) even take them as one
            pl.when(pl.col("_top").str.contains(r"[^0-9\P{Nd}]")).then(pl.lit(
                " (its name holds digits other than 0-9, from another script: person_ids are written in 0-9)"))
            .otherwise(pl.lit("")), pl.lit(site.person_csv))),
        _found("person.no_omop_row", missing.filter(pl.col("_decimal").is_not_null()), pl.col("_top") + "/",
               fmt("person folder {} matches no person_id of {} but {}, its id written {}: OMOP's person_id is an "
                   "integer; write its person_ids as integers ({})", shown(pl.col("_top")), pl.lit(site.person_csv),
                   shown(pl.col("_decimal")),
                   pl.when(pl.col("_decimal").str.contains("[eE]")).then(_written_as(pl.col("_decimal"))).otherwise(
                       pl.lit("as a decimal (as pandas writes an integer column that has empty cells)")),
                   pl.col("_key")))]


def _no_folder(site: _Site, across: _Across) -> list[pl.LazyFrame]:
    """The persons of person.csv that have no folder in any part."""
    if site.person_ids is None:
        return []
    out: list[pl.LazyFrame] = []
    folder_keys = pl.concat([f.filter(pl.col("_is_person")).select("_key") for f in across.folders])["_key"]
    # the ids as person.csv writes them ("000002", not the "2" they are compared as); one written as a decimal (2.0)
    # whose folder is there is person.no_omop_row's, which names it as the cause
    # (one lazy plan, the count and the 5 first of them: eager, 5M ids were copied, keyed and sorted whole: +600 MB)
    n, examples = (
        site.person.lazy().filter(pl.col("_ok") & (pl.col("delimiter") == ",")).select(pl.col("person_id").explode())
        .drop_nulls().with_columns(_key=_as_integer(pl.col("person_id")))
        .unique("_key", keep="first")
        .filter(~pl.col("_key").is_in(folder_keys.implode()))
        .select(pl.len(), pl.col("person_id").bottom_k(5).sort().implode())
        .collect().row(0))
    if n:
        examples = ", ".join(examples)
        out.append(_one("person.no_folder", site.person_csv,
                        f"{plural(n, 'person_id')} in {site.person_csv} {'has' if n == 1 else 'have'} no person folder "
                        f"(e.g. {examples}); "
                        f"expected for persons without waveforms or images"))
    return out


# A file where today's layout keeps an image (<person>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<name>)
# that is no .dcm: most often a DICOM file exported without its extension (001, IM000001), which no rule reads
_IN_SERIES_NOT_DCM = pl.col("_images") & (pl.col("_n") == 6) & ~pl.col("_ext_l").eq_missing("dcm")


def _files(site: _Site) -> list[pl.LazyFrame]:
    f = site.files.lazy()
    covered = (
        (pl.col("_n") == 1) | (~pl.col("_is_person") & ~pl.col("_top_l").is_in(["omop", "metadata"]))
        | pl.col("_person_file") | pl.col("_person_subfolder") | pl.col("_outside_series") | pl.col("_compressed")
        | pl.col("_local_only")
    )
    unparsed = f.filter(pl.col("parse_error").is_not_null() & ~covered).join(
        site.person_mismatch.lazy().select("srcfile"), on="srcfile", how="anti")
    return [
        _found("path.person_mismatch", site.person_mismatch, "srcfile",
               fmt("the name starts with person id {} but the file is in person folder {}: move it to its "
                         "person's folder or fix the name", shown(pl.col("_name_person")), shown(pl.col("_top")))),
        _found("path.unparsed", unparsed, "srcfile",
               # a DICOM export's media index (a CD's, a PACS's) is DICOM but no image: "name it .dcm" was wrong
               pl.when(pl.col("_images") & (pl.col("_name").str.to_uppercase() == "DICOMDIR")).then(pl.lit(
                   "a DICOMDIR, the index a DICOM export (to CD, from a PACS) writes beside its images, not an image: "
                   "the procedures' Images/ holds the images alone, one per <InstanceNumber>.dcm in its series folder; "
                   "remove it"))
               .when(_IN_SERIES_NOT_DCM).then(fmt(
                   "{} lies in a series folder (Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/) but is not "
                   "named <InstanceNumber>.dcm, as the Imaging SOP names each image: if it is a DICOM image, name it "
                   "<InstanceNumber>.dcm (without .dcm it is not read as DICOM: no check looked at its header); "
                   "else move it out of Images/", pl.col("_name")))
               .otherwise(fmt("{}: rename or move the file to fit the site layout", pl.col("parse_error")))),
        # (a file a rule reads gets that rule's finding instead: omop.unreadable, wfdb.bad_header, ...)
        _found("file.empty", f.filter((pl.col("size") == 0) & pl.col("kind").is_null()), "srcfile",
               pl.lit("the file is empty (0 bytes), likely an interrupted copy: copy it again or remove it")),
    ]


def _duplicates(current: pl.DataFrame, across: _Across) -> list[pl.LazyFrame]:
    """The same content under two person folders (of any parts)."""
    persons = pl.concat([f.filter(pl.col("_is_person")).select("_top") for f in across.folders])["_top"]
    dup = (
        current.lazy().select("srcfile", "md5", "size")
        .filter((pl.col("size") > 0) & pl.col("md5").is_not_null())
        .with_columns(_top=top_folder(pl.col("srcfile")))
        .filter(pl.col("_top").is_in(persons.implode()))
        .filter(pl.col("md5").hash().is_duplicated())  # a cheap first cut (most contents occur once), exact below
    )
    persons_of = dup.group_by("md5").agg(_persons=_first_of(pl.col("_top")), _n=pl.col("_top").n_unique()).filter(
        pl.col("_n") > 1)
    return [_found("file.duplicate", dup.join(persons_of, on="md5"), "srcfile",
                   fmt("the same content (MD5 {}) lies under {} person folders ({}): keep it under its own person "
                       "only", pl.col("md5"), pl.col("_n"), _counted_list(pl.col("_persons"), pl.col("_n"))))]


def _twinned_in() -> pl.Expr:
    """How srcfile differs from its twins in _all (keyed alike): letter case, or which Unicode form it is in."""
    return (pl.when(pl.col("_all").list.eval(pl.element().str.to_lowercase()).list.n_unique() == 1)
            .then(pl.lit("letter case"))
            .when(pl.col("srcfile") == pl.col("srcfile").str.normalize("NFC"))
            .then(pl.lit("Unicode form (this one is composed, NFC: é as one character)"))
            .otherwise(pl.lit("Unicode form (this one is decomposed, NFD, as macOS writes names: é as e + accent)")))


def _name_clashes(current: pl.DataFrame) -> list[pl.LazyFrame]:
    """Paths a case-insensitive or Unicode-normalising file system (Windows, macOS: where the centre or a
    reviewer copies the files) cannot hold apart: two files whose paths differ only in letter case or Unicode
    form (a name written on macOS is NFD, é as e + accent), two folders named so (one finding per spelling of
    the topmost, at the folder's path with '/'), or a file whose path is also a folder of other files (a
    container can hold both; a disk cannot). Each is kept, tracked and uploaded as it is, but a copy
    on such a disk keeps one of them, and validation reads both as the same table (person.csv, Person.csv)."""
    # The key once for all rules below, NFC only where a path holds non-ASCII (an ASCII string is its own NFC):
    # normalising every path and keying lazily in three places took most of this rule's 0.5-0.7 s at 100k files.
    paths = current.select("srcfile")
    plain = pl.col("srcfile").str.len_bytes() == pl.col("srcfile").str.len_chars()

    def key(frame: pl.DataFrame) -> pl.DataFrame:
        return pl.concat([
            frame.filter(plain).with_columns(_key=pl.col("srcfile").str.to_lowercase()),
            frame.filter(~plain).with_columns(_key=pl.col("srcfile").str.normalize("NFC").str.to_lowercase()),
        ])

    keyed = key(paths)
    candidates = keyed.filter(pl.col("_key").is_duplicated())  # most paths have no twin: grouped are the few left
    twins = candidates.lazy().join(candidates.lazy().group_by("_key").agg(pl.col("srcfile").sort().alias("_all")),
                                   on="_key").with_columns(
        _others=pl.col("_all").list.set_difference(pl.concat_list(pl.col("srcfile"))).list.sort())
    # Every folder as written: the distinct parents, then their parents, and so on (each level fewer than the
    # last), keyed as the files are (they are far fewer).
    level = paths.get_column("srcfile").filter(paths.get_column("srcfile").str.contains("/", literal=True))
    written = []
    while level.len():
        level = level.str.replace(r"/[^/]*$", "").unique()
        written.append(level)
        level = level.filter(level.str.contains("/", literal=True))
    folders = key(pl.concat(written).unique().to_frame() if written else paths.clear())  # at several levels
    shadowed = keyed.lazy().filter(pl.col("_key").is_in(folders.get_column("_key").implode()))
    # Folders twinned in case or Unicode form (000101/Waveforms/Café/ written once in NFC, once in NFD): their files
    # may all be named apart, so no file path clashes, yet a disk merges the two folders. One finding per spelling of
    # the topmost such folder (the folders below a twin are twins too, or not clashing at all).
    clashing = folders.filter(pl.col("_key").is_duplicated())
    folder_twins = (clashing.lazy()
                    .filter(~pl.col("_key").str.replace(r"/[^/]*$", "").is_in(clashing.get_column("_key").implode())
                            | ~pl.col("_key").str.contains("/", literal=True))
                    .join(clashing.lazy().group_by("_key").agg(pl.col("srcfile").sort().alias("_all")), on="_key")
                    .with_columns(_others=pl.col("_all").list.set_difference(pl.concat_list(pl.col("srcfile")))
                                  .list.sort().list.eval(pl.element() + "/")))
    return [
        # The same letters on screen in Unicode twins: the message says which form this path is written in.
        _found("file.name_clash", twins, "srcfile",
               fmt("its path differs from {} only in {}: a copy on a disk that ignores case or Unicode form (Windows, macOS) keeps one "
                   "of them, and validation reads them as one; rename or remove all but one", _join_list(pl.col("_others")),
                   _twinned_in())),
        _found("file.name_clash", folder_twins, pl.col("srcfile") + "/",
               fmt("this folder's name differs from {} only in {}: the storage keeps both folders, but a copy on a "
                   "disk that ignores case or Unicode form (Windows, macOS) merges them (a file of the same name in "
                   "each keeps one); move the files into one folder, spelled as the procedures spell it, and remove "
                   "the other", _join_list(pl.col("_others")), _twinned_in())),
        _found("file.name_clash", shadowed, "srcfile",
               pl.lit("its path is also a folder of other files (the storage holds both, a disk cannot; letter case "
                      "and Unicode form aside): a copy of the site keeps the file or the folder, not both; rename "
                      "the file")),
    ]


def _split_persons(across: _Across) -> list[pl.LazyFrame]:
    """Person folders that name one person_id in other spellings (0001/ and 000001/: compared as OMOP stores ids,
    without leading zeros): that person's files lie in two folders, and a look-up by either spelling misses the
    other's. Folders of every part, as _no_folder reads them."""
    folders = pl.concat([f.filter(pl.col("_is_person")).select("_top", "_key") for f in across.folders]).unique()
    spellings = folders.group_by("_key").agg(pl.col("_top").sort().alias("_all")).filter(pl.col("_all").list.len() > 1)
    split = folders.join(spellings, on="_key").with_columns(
        _others=pl.col("_all").list.set_difference(pl.concat_list(pl.col("_top"))).list.sort())
    return [_found("person.split_folders", split, pl.col("_top") + "/",
                   fmt("person folder {} names the same person_id as {} (compared without leading zeros, as OMOP "
                       "stores it): one person's files lie in {} folders; move them into one, spelled as person.csv "
                       "writes the id", shown(pl.col("_top")),
                       _join_list(pl.col("_others").list.eval(shown(pl.element() + "/"))),
                       pl.col("_all").list.len().cast(pl.String)))]


# Names Windows cannot hold (Naming Files, Paths, and Namespaces): device names with any extension and in any case
# (CON, nul.txt, COM1.hea; COM¹-³ and LPT¹-³ too), a name ending in '.' or ' ' (Windows drops them: the copy gets
# another name), and < > : " | ? * \ or a control character. A name over 255 bytes fits no common file system
# (NTFS, ext4, APFS: 255), though a container holds it. The procedures ask for portable names.
# Spaces between the device name and its extension do not free it (`nul .txt` is NUL: CPython's ntpath.isreserved
# strips them, "nul .txt" its own example), and CONIN$ / CONOUT$ are the console's (both were let through).
_DEVICE = r"(con|prn|aux|nul|conin\$|conout\$|com[0-9¹²³]|lpt[0-9¹²³])"
_RESERVED = r"(?i)^" + _DEVICE + r" *(\.|$)"
_FORBIDDEN = r'[<>:"|?*\\\x00-\x1f]'
# Any path one of the parts may fail (cheap, over all paths); the parts are looked at only for these.
_SUSPECT = (r"(?i)(^|/)" + _DEVICE + r" *(\.[^/]*)?(/|$)|[. ](/|$)|" + _FORBIDDEN
            + r"|[^/]{64,}")  # 255 bytes are at least 64 characters
MAX_NAME_BYTES = 255
MAX_WINDOWS_PATH = 260  # MAX_PATH, unless long paths are enabled on the computer


def _unportable_names(current: pl.DataFrame) -> list[pl.LazyFrame]:
    """Files and folders whose names a Windows disk (or any disk) cannot hold: an error, as for file.name_clash:
    a centre or reviewer copying the site there loses or renames them. One finding at the first such part of a
    path: a folder's (with '/') for all the files below it. Paths over 260 characters: a warning, as Windows
    holds them where long paths are enabled."""
    parts = (current.lazy().select("srcfile").filter(pl.col("srcfile").str.contains(_SUSPECT))
             .with_columns(_part=pl.col("srcfile").str.split("/"))
             .with_columns(_i=pl.int_ranges(pl.col("_part").list.len()), _n=pl.col("_part").list.len())
             .explode("_part", "_i"))
    part, bad_char = pl.col("_part"), pl.col("_part").str.extract("(" + _FORBIDDEN + ")", 1)
    on_windows = ": a copy of the site on Windows cannot hold it"
    why = (pl.when(part.str.contains(_RESERVED))
           .then(fmt("is the device name {}, which Windows reserves with any extension, in any case" + on_windows,
                     part.str.extract(_RESERVED, 1).str.to_uppercase()))
           .when(bad_char.is_not_null())
           .then(fmt("holds {}, which Windows forbids in names (< > : \" | ? * \\ and control characters)" + on_windows,
                     pl.when(bad_char < " ").then(pl.lit("a control character"))
                     .otherwise(pl.lit("'") + bad_char + pl.lit("'"))))
           .when(part.str.ends_with(".")).then(pl.lit("ends with '.', which Windows drops" + on_windows + " as it is"))
           .when(part.str.ends_with(" ")).then(pl.lit("ends with a space, which Windows drops" + on_windows + " as it is"))
           .when(part.str.len_bytes() > MAX_NAME_BYTES)
           .then(fmt("is {} bytes long: no common file system (NTFS, ext4, APFS) holds a name over 255 bytes, so no "
                     "copy of the site on a disk can hold it", part.str.len_bytes().cast(pl.String))))
    first = (parts.with_columns(_why=why).filter(pl.col("_why").is_not_null())
             .sort("srcfile", "_i").unique("srcfile", keep="first")
             # where the bad part ends: a folder (all the files below it: one finding) or the file itself
             .with_columns(_at=pl.col("srcfile").str.split("/").list.head(pl.col("_i") + 1).list.join("/")
                           + pl.when(pl.col("_i") + 1 < pl.col("_n")).then(pl.lit("/")).otherwise(pl.lit("")))
             .unique("_at"))
    long = current.lazy().select("srcfile").filter(pl.col("srcfile").str.len_chars() > MAX_WINDOWS_PATH)
    return [
        _found("file.unportable_name", first, "_at",
               fmt("the name {} {}{}; rename it",
                   pl.lit("'") + pl.col("_part") + pl.lit("'"), pl.col("_why"),
                   pl.when(pl.col("_i") + 1 < pl.col("_n")).then(pl.lit(", nor the files below it"))
                   .otherwise(pl.lit("")))),
        _found("file.long_path", long, "srcfile",
               fmt("its path is {} characters long: Windows holds at most 260 (with the folder the site is copied "
                   "into) unless long paths are enabled; shorten its folder or file names",
                   pl.col("srcfile").str.len_chars().cast(pl.String))),
    ]
