"""Parse site-relative paths into modality, person, record and start time.

Each pattern is a regular expression (Rust `regex` syntax, as polars uses) with
named groups; all patterns run as vectorised polars expressions over the whole
frame. The first pattern that matches, and whose checks pass, wins. Groups:

  person_id    person folder (text: leading zeros are kept)
  name_person  person id repeated in the file name; must equal person_id
  category     waveform category folder (Telemetry, EEG) or DICOM modality folder (CT, MR, ...)
  session      the record: waveform session, image accession (or study, in older layouts)
  file         file name; with `session`, must start with it (or with <person_id>_<session>)
  date, time   YYYYMMDD and HHMMSS
  duration     seconds
  segment      segment or instance number

Each pattern also names its `layout`: "current" for the procedures in force (Waveform File Format
v2.1, Data-Upload-Update, Imaging SOP), else the superseded edition the path follows; those stay
accepted, and validation names the current form (rule layout.superseded).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import polars as pl

from .errors import ConfigError
from .frames import CLASSIFIED_SCHEMA, fmt
from .units import named

GROUPS = ("person_id", "name_person", "category", "session", "file", "date", "time", "duration", "segment")
CURRENT = "current"
# Superseded layouts still found at sites (value of `layout`), and the current form each became.
SUPERSEDED = {
    "waveforms-v1.0": "<person_id>/Waveforms/Telemetry|EEG/<session_id>/<session_id>.<ext> (Waveform File Format "
                      "v2.1: a Telemetry or EEG folder between Waveforms/ and the session)",
    "waveforms-v2.0": "<person_id>/Waveforms/Telemetry|EEG/<session_id>/<session_id>.<ext> (Waveform File Format "
                      "v2.1 spells the folders Waveforms, Telemetry and EEG; v2.0 wrote them in lower case)",
    "waveforms-flat": "<person_id>/Waveforms/Telemetry|EEG/<session_id>/<session_id>.<ext> (the flat "
                      "<person_id>_<YYYYMMDD>_<HHMMSS>_<duration>.<ext> naming is from the first upload SOP)",
    "records-v1.0": "no RECORDS file (Waveform File Format v1.0); sessions are the folders under Telemetry/ and EEG/",
    "metadata-v2.0": "Metadata/SUBMISSION.md (Waveform File Format v2.1 moved it into Metadata/)",
    "images-study": "<person_id>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm "
                    "(the study/series folders with long file names are from earlier upload SOPs)",
}


@dataclass(frozen=True)
class PathPattern:
    modality: str
    regex: str
    description: str
    layout: str = CURRENT


_PERSON = r"(?P<person_id>[^/]+)"
_STAMP = r"(?P<name_person>[^/]+?)_(?P<date>\d{8})_(?P<time>\d{6})"

DEFAULT_PATTERNS: tuple[PathPattern, ...] = (
    PathPattern("OMOP", r"^(?i:omop)/(?P<session>.+)$", "OMOP/<file>"),
    PathPattern("Metadata", r"^(?i:metadata)/(?P<session>.+)$", "Metadata/<file>"),
    # Delivered with the release: the linkage registries (Multimodal-Linkage) at the site root.
    PathPattern("Metadata", r"^(?P<session>[^/]*(?i:registry)[^/]*\.(?i:csv))$", "<waveform|image>_registry.csv"),
    PathPattern("Metadata", r"^(?P<session>(?i:submission\.md))$", "SUBMISSION.md (v2.0: now in Metadata/)",
                "metadata-v2.0"),
    PathPattern("Waveforms", r"^(?P<session>RECORDS)$", "RECORDS (v1.0)", "records-v1.0"),
    # one in a session folder too: no edition asks for it there (v1.0 kept one at the root, v2.1 none); before
    # today's <session_id>/<file>, which took it for a session file and said nothing
    PathPattern("Waveforms", rf"^{_PERSON}/(?i:waveforms)/(?P<category>(?i:telemetry|eeg))/(?P<session>[^/]+)/RECORDS$",
                "<person_id>/Waveforms/Telemetry|EEG/<session_id>/RECORDS", "records-v1.0"),
    PathPattern(
        "Waveforms",
        rf"^{_PERSON}/Waveforms/(?P<category>Telemetry|EEG)/(?P<session>[^/]+)/(?P<file>[^/]+)$",
        "<person_id>/Waveforms/Telemetry|EEG/<session_id>/<session_id>[...].<ext>",
    ),
    # v2.0 spelled the folders waveforms/telemetry|eeg; v2.1 spells them Waveforms, Telemetry and EEG
    PathPattern(
        "Waveforms",
        rf"^{_PERSON}/(?i:waveforms)/(?P<category>(?i:telemetry|eeg))/(?P<session>[^/]+)/(?P<file>[^/]+)$",
        "<person_id>/waveforms/telemetry|eeg/<session_id>/<session_id>[...].<ext> (v2.0)",
        "waveforms-v2.0",
    ),
    # a RECORDS beside the sessions (Telemetry|EEG/RECORDS): before v1.0's <session>/<file>, which took Telemetry for
    # a session folder and told the site to add the Telemetry or EEG folder it has
    PathPattern("Waveforms", rf"^{_PERSON}/(?i:waveforms)/(?i:telemetry|eeg)/RECORDS$",
                "<person_id>/Waveforms/Telemetry|EEG/RECORDS", "records-v1.0"),
    # a site moving to v2.1 puts its flat files in Telemetry/ or EEG/ before renaming them: the folder is their
    # category, not a session (one "EEG" record held every EEG recording of the person, each with its own stamp)
    PathPattern(
        "Waveforms",
        rf"^{_PERSON}/(?i:waveforms)/(?:(?P<category>(?i:telemetry|eeg))/)?(?:(?P<session>[^/]+)/)?{_STAMP}_(?P<duration>\d+(?:\.\d+)?)(?:_(?P<segment>[^/._]+))?\.[^/]+$",
        "<person_id>/Waveforms/[Telemetry|EEG/][<session>/]<person_id>_<YYYYMMDD>_<HHMMSS>_<duration_s>[_<segment>].<ext>",
        "waveforms-flat",
    ),
    PathPattern(
        "Waveforms",
        rf"^{_PERSON}/(?i:waveforms)/(?P<session>[^/]+)/(?P<file>[^/]+)$",
        "<person_id>/Waveforms/<session>/<session>[...].<ext> or <person_id>_<session>[...].<ext>",
        "waveforms-v1.0",
    ),
    PathPattern("Waveforms", rf"^{_PERSON}/(?i:waveforms)/RECORDS$", "<person_id>/Waveforms/RECORDS", "records-v1.0"),
    PathPattern(
        "Images",
        rf"^{_PERSON}/(?i:images)/(?P<category>[A-Za-z0-9]+)/(?P<session>[^/]+)/[^/]+/(?P<segment>[^/]+)\.(?i:dcm)$",
        "<person_id>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm",
    ),
    PathPattern(
        "Images",
        rf"^{_PERSON}/(?i:images)/(?P<session>[^/]+)/[^/]+/{_STAMP}_[A-Za-z0-9]+_[^/_]+_(?P<segment>[^/_]+)\.(?i:dcm)$",
        "<person_id>/Images/<study>/<series>/<person_id>_<YYYYMMDD>_<HHMMSS>_<MOD>_<series>_<instance>.dcm",
        "images-study",
    ),
    PathPattern(
        "Images",
        rf"^{_PERSON}/(?i:images)/(?P<session>[^/]+)/[^/]+/(?P<name_person>[^/_]+)_[^/_]+_[^/_]+_[A-Za-z0-9]+_(?P<segment>[^/_]+)\.(?i:dcm)$",
        "<person_id>/Images/<study>/<series>/<person_id>_<study>_<series>_<MOD>_<instance>.dcm",
        "images-study",
    ),
)

# A session name may carry its own start stamp (<person>_<YYYYMMDD>_<HHMMSS>).
_SESSION_STAMP = r"_(?P<date>\d{8})_(?P<time>\d{6})$"


def build_patterns(overrides: dict[str, list[str]] | None, config: str = "chorus.toml") -> tuple[PathPattern, ...]:
    """Defaults, with a modality's patterns replaced by those in chorus.toml (`config`: the file, for messages)."""
    overrides = overrides or {}
    patterns: list[PathPattern] = []
    for modality in dict.fromkeys(p.modality for p in DEFAULT_PATTERNS):
        if modality in overrides:
            if not overrides[modality]:  # (`Waveforms = []`, a template's list left empty: was taken, and every
                # such file of the site, recorded ones too, fit no pattern: unparsed, classified as Other, exit 1)
                raise ConfigError(f"[patterns] {modality} lists no pattern: every {modality} file of the site would "
                                  "fit none (each recorded as unparsed and classified as Other, those of earlier "
                                  "versions too)", where=f"{config} [patterns] {modality}",
                                  fix=f"give at least one pattern, or remove the line to keep the default patterns of "
                                      f"{modality} (the README's section \"Site layout (default patterns)\")")
            for i, regex in enumerate(overrides[modality]):
                _check_regex(modality, i, regex, config)
                patterns.append(PathPattern(modality, regex, f"patterns.{modality}[{i}]"))
        else:
            patterns.extend(p for p in DEFAULT_PATTERNS if p.modality == modality)
    return tuple(patterns)


# Bumped when classification changes other than through the patterns (what a group means, how a
# category is spelled): the manifest's current rows are then classified again (commit.py).
CLASSIFY_LOGIC = 7  # (7: a hit's fields all come from the first pattern it hits)


def fingerprint(patterns: tuple[PathPattern, ...]) -> str:
    """Identifies a classification: the patterns in force and the logic applying them."""
    import hashlib

    text = "\n".join(f"{p.modality}\t{p.layout}\t{p.regex}" for p in patterns)
    return f"{CLASSIFY_LOGIC}:{hashlib.sha1(text.encode('utf-8'), usedforsecurity=False).hexdigest()[:16]}"


def _regex_error(text: str, regex: str) -> str:
    """The Rust regex error's reason and position, on one line: polars gives it over four (the pattern, a line of '^'
    under the fault, "error: unclosed group"), which a message showed as 'regex error: regex parse error:\\n
    (unclosed\\n    ^\\nerror: unclosed group'."""
    lines = text.splitlines()
    reason = next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")), None)
    if reason is None:
        return " ".join(line.strip() for line in lines if line.strip())
    # the marks line sits under the pattern as the error shows it (indented alike): its first '^' is the fault
    if "\n" not in regex and len(lines) >= 4 and lines[-3].endswith(regex) and set(lines[-2].strip()) <= set("^- "):
        column = lines[-2].index("^") - (len(lines[-3]) - len(regex)) + 1 if "^" in lines[-2] else None
        if column is not None and 1 <= column <= len(regex) + 1:
            return f"{reason}, at character {column}"
    return reason


@functools.lru_cache(maxsize=256)
def _group_names(regex: str) -> tuple[str, ...]:
    """The named groups of a pattern, as the regex engine reads them: (?P<name>...) and (?<name>...) alike (a
    pattern written the second way was taken for one with no group, and fitted no path); unnamed groups are
    numbers there, which no name can be."""
    fields = pl.Series("p", [""], dtype=pl.String).str.extract_groups(regex).struct.fields
    return tuple(f for f in fields if not f.isdigit())


def _check_regex(modality: str, index: int, regex: str, config: str = "chorus.toml") -> None:
    where = f"{config} [patterns] {modality}[{index}]"
    try:
        names = set(_group_names(regex))
    except Exception as exc:  # polars raises ComputeError for bad regexes
        raise ConfigError(f"invalid path pattern '{regex}': {_regex_error(str(exc), regex)}", where=where,
                          fix="fix the regular expression (Rust regex syntax)") from None
    if not names:
        raise ConfigError(f"path pattern '{regex}' names no group: a path is taken by the groups a pattern sets, so "
                          "it would fit no path (each file it fits recorded as unparsed)", where=where,
                          fix="name the parts of the path, at least the person folder, (?P<person_id>[^/]+), and the "
                              f"record, (?P<session>[^/]+); the group names: {', '.join(GROUPS)}")
    unknown = names - set(GROUPS)
    if unknown:
        raise ConfigError(
            f"unknown {named('group name', sorted(unknown))} in path pattern",
            where=where,
            fix=f"use only these group names: {', '.join(GROUPS)}",
        )


# A compressed copy or an archive (validate's file.compressed): no procedure ships one, nothing reads inside it
COMPRESSED_NAME = r"(?i)\.(gz|gzip|bz2|xz|zst|lz4|zip|7z|rar|tgz|tar)$"
RECORDS_NAME = r"(?:^|/)RECORDS$"
# The Imaging SOP's de-identification lookup tables, image_map.csv and personal_map.csv: they map the original
# PatientID and AccessionNumber (MRNs) to person_id and image_occurrence_id, the "identifiable cross-walk" that "stays
# local at the site and is not shared" (validate's layout.identifiable_table; upload never sends one)
LOCAL_ONLY_NAME = r"(?i)(?:^|/)(?:image|personal)_map\.csv$"
LOCAL_ONLY_WHY = ("a de-identification lookup table (image_map.csv, personal_map.csv: original PatientID and "
                  "AccessionNumber, MRNs, to person_id and image_occurrence_id), which the Imaging SOP keeps at the "
                  "site: \"stays local at the site and is not shared\"")
LOCAL_ONLY_FIX = ("move it out of the site's folder, or leave it out of every run (--exclude with its name, "
                  "or exclude in chorus.toml's [run]), and keep it at the site")


def registry_listed() -> pl.Expr:
    """The files a linkage registry has a row for (Multimodal-Linkage: one per file of the Images and Waveforms
    folders, grouped by session or accession): those that fit a layout, with a person; not a RECORDS file (an index
    of record names, no capture) nor a compressed copy (to decompress, not to ship). One definition for the registries
    `chorus-batch registry` writes and for validate's check of a site's own."""
    return (pl.col("modality").is_in(["Waveforms", "Images"]) & pl.col("person_id").is_not_null()
            & pl.col("parse_error").is_null() & ~pl.col("srcfile").str.contains(RECORDS_NAME)
            & ~pl.col("srcfile").str.contains(COMPRESSED_NAME))


def record_key() -> pl.Expr:
    """The registry key of a classified file: modality|person|session, with the waveform category
    before the session (Telemetry and EEG sessions are different records; NULL if unparsed)."""
    session = pl.when((pl.col("modality") == "Waveforms") & pl.col("category").is_not_null()).then(
        pl.concat_str([pl.col("category"), pl.col("session_id")], separator="/")).otherwise(pl.col("session_id"))
    return pl.when(pl.col("parse_error").is_null() & pl.col("session_id").is_not_null()).then(
        pl.concat_str([pl.col("modality"), pl.col("person_id").fill_null(""), session], separator="|")
    ).alias("record_key")


_DIGITS = [str(d) for d in range(10)]


def _checks(pattern: PathPattern, g: pl.Expr) -> list[tuple[pl.Expr, pl.Expr]]:
    """The checks of a path that matched the pattern's shape, in order: (fails, why) each."""
    person, name_person = g.struct.field("person_id"), g.struct.field("name_person")
    session, file = g.struct.field("session"), g.struct.field("file")
    date, time = g.struct.field("date"), g.struct.field("time")
    stamp_ok = pl.concat_str([date, time]).str.strptime(pl.Datetime, "%Y%m%d%H%M%S", strict=False).is_not_null()
    # A name starts with its session id only where the id ends there: 10001.h5 is named by session 10001, not 1000
    # (the procedures name a session's files <session_id>.<ext>, <session_id>n.csv, <session_id>_0001.dat, ...).
    def named_by(prefix: pl.Expr) -> pl.Expr:
        # (the character after it is one of the ten: as a regex ^[0-9]$ on it, at a few times less the cost)
        return file.str.starts_with(prefix) & ~(
            prefix.str.contains(r"[0-9]$") & file.str.slice(prefix.str.len_chars(), 1).is_in(_DIGITS))
    return [
        (name_person.is_not_null() & (name_person != person),
         fmt("person id in the file name ({}) differs from the person folder ({})", name_person, person)),
        # v1.0's <session>/<file> also fits a file lying directly in Waveforms/Telemetry/ or EEG/: not a session
        (pl.lit(pattern.layout == "waveforms-v1.0") & session.str.contains(r"^(?i:telemetry|eeg)$"),
         fmt("file {} lies directly in Waveforms/{}/, not in a session folder "
             "(Waveforms/{}/<session_id>/<session_id>[...].<ext>)", file, session, session)),
        (file.is_not_null() & session.is_not_null() & ~named_by(session)
         & ~named_by(pl.concat_str([person, session], separator="_")) & (file != "RECORDS"),
         fmt("file name {} does not start with its session id {}", file, session)),
        (date.is_not_null() & ~stamp_ok, fmt("invalid date/time {}_{} in the file name", date, time)),
    ]


def _reason(pattern: PathPattern, g: pl.Expr) -> pl.Expr:
    """Why a path that matched the pattern's shape still fails it (NULL: it passes): the first check it fails."""
    (fails, why), *rest = _checks(pattern, g)
    chain = pl.when(fails).then(why)
    for fails, why in rest:
        chain = chain.when(fails).then(why)
    return chain.otherwise(pl.lit(None, pl.String))


def _fails(pattern: PathPattern, g: pl.Expr) -> pl.Expr:
    """Whether a path that matched the pattern's shape fails one of its checks (where _reason may be other than
    NULL; a NULL test fails none, as in pl.when)."""
    return pl.any_horizontal([fails.fill_null(False) for fails, _ in _checks(pattern, g)])


# A line break, a tab or another control character: no layout's name holds one (some patterns' [^/]+ would take it,
# OMOP/'s .+ not a line break), so a path with one fits none, whatever else it fits: unparsed, in its folder's modality
CONTROL_CHARACTER = r"[\x00-\x1f\x7f]"


def _expected(modality: str, default: str, patterns: tuple[PathPattern, ...]) -> str:
    """What a path of `modality` that fits no pattern was expected to be: the default layout, or, where
    [patterns] replaced the modality's patterns, those (naming the default layout sent the user to rename files
    that fit it, when it was the configured pattern they missed)."""
    own = [p.regex for p in patterns if p.modality == modality and p.description.startswith("patterns.")]
    if not own:
        return f"path fits no {modality} layout: expected {default}"
    return (f"path fits no pattern of [patterns] {modality} in the configuration, which replace the default "
            f"{modality} layouts: " + ", ".join(f"'{r}'" for r in own))  # (as chorus.toml writes them: no repr's \\)


def _fallback(srcfile: pl.Expr, patterns: tuple[PathPattern, ...] = DEFAULT_PATTERNS) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """Modality, person and reason for a path that no pattern matched, from where it lies."""
    parts = srcfile.str.split("/")
    first, second = parts.list.get(0, null_on_oob=True), parts.list.get(1, null_on_oob=True).str.to_lowercase()
    n_parts = parts.list.len()
    modality = (
        pl.when(n_parts == 1).then(pl.lit("Other"))
        # (only a path with a control character gets here from OMOP/ or Metadata/: it was Other)
        .when(first.str.to_lowercase() == "omop").then(pl.lit("OMOP"))
        .when(first.str.to_lowercase() == "metadata").then(pl.lit("Metadata"))
        .when(second == "waveforms").then(pl.lit("Waveforms"))
        .when(second == "images").then(pl.lit("Images"))
        .when(second == "metadata").then(pl.lit("Metadata"))
        .otherwise(pl.lit("Other"))
    )
    person = pl.when(second.is_in(["waveforms", "images", "metadata"])).then(first)
    # a modality folder where the person folder belongs (no person above it), or a level below it (a person folder
    # copied into itself, the site copied into a folder): the folder above it was blamed, a person folder that was right
    third = parts.list.get(2, null_on_oob=True)
    spelled = {"waveforms": "Waveforms", "images": "Images"}
    at_root = first.str.to_lowercase().replace_strict(spelled, default=None)
    down = third.str.to_lowercase().replace_strict(spelled, default=None)
    reason = (
        # (no pattern takes one: blaming the folder, as below, sent the user to rename a folder that was right)
        pl.when(srcfile.str.contains(CONTROL_CHARACTER))
        .then(pl.lit("the path holds a control character (a line break, a tab, an escape or another, shown escaped)"))
        .when(n_parts == 1)
        .then(pl.lit("file at the site root: expected it in OMOP/, Metadata/ or a person folder"))
        .when(second == "waveforms")
        .then(pl.lit(_expected("Waveforms", "Waveforms/Telemetry|EEG/<session_id>/<session_id>[...].<ext>", patterns)))
        .when(second == "images")
        .then(pl.lit(_expected("Images", "Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm",
                               patterns)))
        # Waveform File Format v2.1 puts Metadata/ at the site root, its files "directly under the Metadata folder":
        # a person's Metadata/ is no place of today's layout (nor of an earlier edition's)
        .when(second == "metadata")
        .then(fmt("Metadata/ lies in folder {}/: it belongs at the site root (Metadata/<file>), once for the site", first))
        .when(at_root.is_not_null())
        .then(fmt("{}/ lies at the site root: expected <person_id>/{}/ (each person's files in that person's folder)",
                  first, at_root))
        .when(down.is_not_null() & (n_parts > 3))
        .then(fmt("{}/ lies two folders down, in {}/{}/: expected <person_id>/{}/ at the site root", third, first,
                  parts.list.get(1, null_on_oob=True), down))
        # a file directly in a top folder, or a second folder that is not Waveforms/ or Images/ (1001/notes.txt,
        # 1001/Waveform/...): "folder 1001/ is not OMOP/, Metadata/ or <person_id>/Waveforms|Images/" sent the user to
        # rename a person folder that was right, when the file or the folder below it was out of place
        # (the folder, not the file, names the reason: the report counts the files of each reason, and a reason per
        # file made a stray folder of a million files a million reasons)
        .when(n_parts == 2)
        .then(fmt("folder {}/ holds this file directly: files belong in OMOP/, Metadata/ or "
                  "<person_id>/Waveforms|Images/ (a person folder holds only those two folders)", first))
        .otherwise(fmt("folder {}/{}/ is not <person_id>/Waveforms/ or <person_id>/Images/, nor is folder {}/ OMOP/ or "
                       "Metadata/", first, parts.list.get(1, null_on_oob=True), first))
    )
    return modality, person, reason


BATCH_ROWS = 100_000  # bounds the memory of the intermediate regex captures


def classify(listing: pl.DataFrame, patterns: tuple[PathPattern, ...] = DEFAULT_PATTERNS) -> pl.DataFrame:
    """Add the CLASSIFIED_SCHEMA columns to a frame with a `srcfile` column."""
    if listing.height > BATCH_ROWS:
        return pl.concat([_classify(listing.slice(start, BATCH_ROWS), patterns)
                          for start in range(0, listing.height, BATCH_ROWS)])
    return _classify(listing, patterns)


# The groups a hit gives the classified row, all from the first pattern the path hits: a field that pattern lacks
# stays NULL (was: filled from a later pattern the path hit too, so a current session's WFDB segment file
# <person>_<YYYYMMDD>_<HHMMSS>_0001.dat, read with the flat naming, had a duration of 1 s; the current layout names
# a file by its session id alone, and its layout reads the rest of the name as nothing)
_HIT_FIELDS = ("person_id", "session", "date", "time", "duration", "segment", "name_person", "category")


def _classify(listing: pl.DataFrame, patterns: tuple[PathPattern, ...]) -> pl.DataFrame:
    if listing.height == 0:
        return listing.with_columns(pl.lit(None, dtype).alias(name) for name, dtype in CLASSIFIED_SCHEMA.items())
    n = listing.height
    srcfile = listing["srcfile"]
    plain = ~srcfile.str.contains(CONTROL_CHARACTER)
    # The first hit's groups (NULL until a hit gives them), which pattern hit first, and, for the
    # paths no pattern hits, what each pattern that fits the path's shape said of it.
    found = {f: pl.repeat(None, n, dtype=pl.String, eager=True) for f in _HIT_FIELDS}
    first = pl.repeat(None, n, dtype=pl.Int32, eager=True)
    hit_any = pl.repeat(False, n, dtype=pl.Boolean, eager=True)
    near: list[tuple[int, pl.Series, pl.DataFrame]] = []  # (pattern, its rows, their person_id and _r)
    for i, p in enumerate(patterns):
        names = set(_group_names(p.regex))
        if not names:  # (no group to tell a match by: fits no path; [patterns] refuses one)
            continue
        gives = [f for f in _HIT_FIELDS if f in names]
        # A pattern is run on the paths no earlier pattern hit; the regex's test first, its groups on the paths
        # that pass it alone (extracting the groups costs several times the test; was: both on every path)
        rows = (~hit_any).arg_true()
        if not rows.len():
            continue
        fits = (srcfile if rows.len() == n else srcfile.gather(rows)).str.contains(p.regex).fill_null(False)
        rows = rows.filter(fits)
        if not rows.len():
            continue
        extracted = srcfile.gather(rows).str.extract_groups(p.regex)
        g = pl.DataFrame({name: extracted.struct.field(name) for name in sorted(names)}).with_columns(
            _plain=plain.gather(rows), _row=rows)
        # a match always sets at least one group, or the empty string for an optional one (a path whose match sets
        # none was taken for no match, as where extract_groups yields NULL fields when the regex fails)
        g = g.filter(pl.any_horizontal([pl.col(name).is_not_null() for name in names]))
        if not g.height:
            continue
        struct = pl.struct([(pl.col(f) if f in names else pl.lit(None, pl.String)).alias(f) for f in GROUPS])
        # the checks' reason, written out for the paths that fail one alone (most pass; was: for every path)
        fails = g.select(_fails(p, struct)).to_series()
        reason = pl.repeat(None, g.height, dtype=pl.String, eager=True)
        if fails.any():
            reason = reason.scatter(fails.arg_true(), g.filter(fails).select(_reason(p, struct)).to_series())
        g = g.with_columns(_r=reason)
        near.append((i, g["_row"], g.select("person_id" if "person_id" in names else pl.lit(None, pl.String)
                                            .alias("person_id"), "_r", "_plain")))
        hits = g.filter(pl.col("_r").is_null() & pl.col("_plain"))
        if not hits.height:
            continue
        at = hits["_row"]
        for f in gives:
            found[f] = found[f].scatter(at, hits[f])
        first = first.scatter(at, i)
        hit_any = hit_any.scatter(at, True)
    work = listing.with_columns(
        _hit=hit_any,
        **{f"_{'person' if f == 'person_id' else f}": found[f] for f in _HIT_FIELDS},
        _modality=first.replace_strict({i: p.modality for i, p in enumerate(patterns)}, default=None,
                                       return_dtype=pl.String),
        _layout=first.replace_strict({i: p.layout for i, p in enumerate(patterns)}, default=None,
                                     return_dtype=pl.String),
    )
    # The modality, person and reason of a path that fits no pattern, worked out for those paths alone: the
    # fallback splits each path into its folders, and most paths of a site fit a pattern (was: for every path).
    missed = ~hit_any
    u_modality, u_person, u_reason = (pl.repeat(None, n, dtype=pl.String, eager=True) for _ in range(3))
    where = missed.arg_true()
    if where.len():
        place = missed.cast(pl.UInt32).cum_sum() - 1  # a missed path's place among the missed
        lost = pl.DataFrame({"srcfile": srcfile.gather(where)})
        matched, persons, reasons = [], [], []
        for i, rows, said in near:
            keep = missed.gather(rows)
            at = place.gather(rows.filter(keep))
            said = said.filter(keep)
            m = pl.repeat(False, len(where), dtype=pl.Boolean, eager=True).scatter(at, True)
            person = pl.repeat(None, len(where), dtype=pl.String, eager=True).scatter(at, said["person_id"])
            # (the checks' reason of a path with a control character is not its reason: that character is)
            reason = pl.repeat(None, len(where), dtype=pl.String, eager=True).scatter(
                at, pl.select(pl.when(said["_plain"]).then(said["_r"])).to_series())
            matched.append((patterns[i], m)); persons.append(person); reasons.append(reason)
        near_modality = [pl.when(m).then(pl.lit(p.modality)) for p, m in matched]
        fallback_modality, fallback_person, fallback_reason = _fallback(pl.col("srcfile"), patterns)
        u = lost.select(
            pl.coalesce(*near_modality, fallback_modality).alias("m"),
            pl.coalesce(*persons, fallback_person).alias("p"),
            pl.coalesce(*reasons, fallback_reason).alias("r"),
        )
        u_modality = u_modality.scatter(where, u["m"])
        u_person = u_person.scatter(where, u["p"])
        u_reason = u_reason.scatter(where, u["r"])
    work = work.with_columns(_u_modality=u_modality, _u_person=u_person, _u_reason=u_reason)
    # Sessions named <...>_<YYYYMMDD>_<HHMMSS> give the start when the file name does not.
    session_stamp = pl.col("_session").str.extract_groups(_SESSION_STAMP)
    date = pl.coalesce(pl.col("_date"), session_stamp.struct.field("date"))
    time = pl.coalesce(pl.col("_time"), session_stamp.struct.field("time"))
    start = pl.concat_str([date, time]).str.strptime(pl.Datetime, "%Y%m%d%H%M%S", strict=False)
    # Waveform categories as the procedures spell them (Telemetry, EEG), DICOM modalities upper-case.
    category = (
        pl.when(pl.col("_modality") != "Waveforms").then(pl.col("_category").str.to_uppercase())
        .when(pl.col("_category").str.to_lowercase() == "eeg").then(pl.lit("EEG"))
        .when(pl.col("_category").is_not_null()).then(pl.lit("Telemetry"))
    )
    # Flat waveform files outside a session folder form a record per start stamp.
    session_id = pl.coalesce(
        pl.col("_session"),
        pl.when(pl.col("_date").is_not_null()).then(pl.concat_str([pl.col("_name_person"), pl.col("_date"), pl.col("_time")], separator="_")),
        pl.when(pl.col("_person").is_not_null()).then(pl.lit("")),
    )
    out = work.lazy().with_columns(
        modality=pl.when(pl.col("_hit")).then(pl.col("_modality")).otherwise(pl.col("_u_modality")),
        person_id=pl.when(pl.col("_hit")).then(pl.col("_person")).otherwise(pl.col("_u_person")),
        category=pl.when(pl.col("_hit")).then(category),
        session_id=pl.when(pl.col("_hit")).then(session_id),
        start_date=start.dt.strftime("%Y-%m-%d"),
        start_time=start.dt.strftime("%H:%M:%S"),
        duration_s=pl.col("_duration").cast(pl.Float64, strict=False),
        segment=pl.col("_segment"),
        parse_error=pl.when(pl.col("_hit")).then(pl.lit(None, pl.String)).otherwise(pl.col("_u_reason")),
        layout=pl.when(pl.col("_hit")).then(pl.col("_layout")),
    )
    return out.select(*listing.columns, *CLASSIFIED_SCHEMA).cast(CLASSIFIED_SCHEMA).collect()  # type: ignore[arg-type]
