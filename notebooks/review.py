# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reviewing a submission
#
# Check one version of a site's manifest before it is merged: are all persons there, do the waveform
# sessions cover plausible dates, did the submission delete or replace more than expected, are there
# duplicates, empty files, unparseable names, scan errors or validation findings?
#
# - **Interactively:** `jupyter lab notebooks/review.ipynb`, set `manifest` below, then *Run All*.
# - **Headless:** `chorus-batch review --db /path/to/chorus_manifest.sqlite --out review-out.ipynb` (add
#   `--version LABEL`, `--compare-to LABEL` to review an older version or compare with another one); it writes
#   the executed notebook owner-only, which `papermill` run by hand does not (it takes the umask's mode).
#
# Each section says what to look for. The last cell prints a checklist: `OK`, `CHECK` (look at that
# section), or `SKIP` (nothing to compare with, or not known).

# %% tags=["parameters"]
manifest = "chorus_manifest.sqlite"  # a SQLite manifest, or the folder given to `chorus-batch run --parquet`
version = None  # the version to review (a label or an ISO date-time), or None for the latest
compare_to = None  # the version to compare with, or None for the one before `version`
large_change_share = 0.05  # flag a submission that removes or replaces more than this share of the files
manifest_name = None  # how the commands this notebook suggests name the manifest; None: `manifest` (`chorus-batch review --db az://...` reads a local copy and sets the URL)

# %%
import sys
from datetime import datetime

import matplotlib.pyplot as plt
import polars as pl
from IPython.display import Markdown, display

from chorus_batch.review import share_argument
from chorus_batch.units import home_relative

pl.Config.set_tbl_rows(20)
pl.Config.set_fmt_str_lengths(60)
pl.Config.set_tbl_width_chars(140)
plt.rcParams.update({"figure.figsize": (11, 3.5), "figure.dpi": 80, "axes.grid": True, "grid.alpha": 0.3})
print(f"kernel: python {sys.version.split()[0]}, prefix {home_relative(sys.prefix)}")  # '~': the home folder, not named
large_change_share = share_argument(large_change_share, "large_change_share")  # 0.05, or "5%" as text

# %% [markdown]
# ## Open the manifest
#
# `open_manifest` reads a SQLite manifest or a Parquet snapshot folder; every method returns a polars frame,
# and `m.duckdb(version, compare_to=other)` gives a DuckDB connection with the tables `files` (and
# `base_files`, and the view `diff`: `m.diff(other, version)`'s rows), `versions`, `changes`, `registry` and
# `scan_errors`. The sections below ask DuckDB and bring only sums, pages and flagged rows into memory, so the
# notebook's memory does not grow with the manifest (`m.files(version)` brings a whole version: fine for a few
# thousand files).

# %%
from IPython import get_ipython

from chorus_batch.review import (PLAUSIBLE_FROM, open_manifest, other_rules_advice, severity_counts, shown_frame,
                                  size_flags, text_argument, unvalidated_advice)
from chorus_batch.units import counted, number, shown_name  # counts as the HTML report writes them: 3,006

m = open_manifest(manifest, parameter="manifest")  # (its errors say to set `manifest` above)
# The manifest as `chorus-batch --db` takes it: the file read (absolute: the commands paste in any folder; the
# home folder as '~', which --db reads back: a shared copy need not name it), or the az:// URL of a manifest in
# Azure, whose local copy this reads.
db = (text_argument(manifest_name, "manifest_name", "the notebook's `manifest_name` parameter", '"az://site/chorus_manifest.sqlite"')
      if manifest_name is not None else "") or home_relative(str(m.path))  # (a number was printed as the manifest)
# Tables show names escaped, as `chorus-batch files` and the HTML report do: a line break, a right-to-left
# override or a trailing space in a file name would show another name (the frames' values stay exact).
if get_ipython() is not None:
    formatters = get_ipython().display_formatter.formatters
    formatters["text/html"].for_type(pl.DataFrame, lambda frame: shown_frame(frame)._repr_html_())
    formatters["text/plain"].for_type(pl.DataFrame, lambda frame, p, cycle: p.text(repr(shown_frame(frame))))

# %%
label = m.resolve(version)  # a label as `papermill -p version 20261127034021` passes it, a number, is read as its text
labels = m.versions()["label"].to_list()
base = m.compared_with(label, compare_to)  # the version before, else None (the first); compare_to == version is refused
con = m.duckdb(label, compare_to=base)


def sql(query, **params):
    """A DuckDB query over the tables of `con`, as a polars frame."""
    return con.sql(query, params=params or None).pl()  # (a relation: con.execute for one row)


n_files, n_bytes, n_persons = con.execute("SELECT count(*), coalesce(sum(size), 0)::BIGINT, count(DISTINCT person_id) FROM files").fetchall()[0]
n_base_files = con.execute("SELECT count(*) FROM base_files").fetchall()[0][0] if base else 0
print(f"manifest   {db}")
print(f"reviewing  {label}: {n_files:,} files, {n_bytes:,} bytes, {n_persons:,} persons")
# A compare_to later than the version reviewed reads the comparisons backwards: from it back to the version reviewed
# ("removed" below: files the later version has and this one has not). Said wherever a comparison is shown.
later = base is not None and base > label
since = f"the later {base}" if later else base  # how the comparisons name the compared version
print(f"compare to {base or '- (no earlier version: the comparisons below are skipped)'}"
      + (f" (LATER than {label}: the comparisons read from {base} back to {label})" if later else ""))
print(f"versions   {len(labels)} in the manifest, {labels[0]} .. {labels[-1]}")
# A time given as `version` or `compare_to` selects the version in force then: said, and a time after the latest
# version's commit (a date in the future) plainly shows the latest one (a time before the first is refused above).
for note in (m.as_of_note(version, label), base and m.as_of_note(compare_to, base)):
    if note:
        print(f"NOTE       {note}")

# %% [markdown]
# Helpers for the checklist and the plots.

# %%
checks = {}  # item -> (state, detail), printed by the last cell


def check(item, ok, detail):
    checks[item] = ("SKIP" if ok is None else "OK" if ok else "CHECK", detail)


MODALITY_ORDER = ["OMOP", "Metadata", "Waveforms", "Images", "Other"]
seen = set(sql("SELECT DISTINCT modality FROM files WHERE modality IS NOT NULL")["modality"]) | set(m.change_counts()["modality"].drop_nulls())
MODALITIES = [x for x in MODALITY_ORDER if x in seen] + sorted(seen - set(MODALITY_ORDER))
# The HTML report's colours, so the two read alike.
COLORS = {"Waveforms": "#1098ad", "Images": "#7048e8", "OMOP": "#f59f00", "Metadata": "#868e96", "Other": "#e64980",
          "added": "#2f9e44", "removed": "#e03131", "replaced": "#f08c00", "renamed": "#1c7ed6",
          "error": "#e03131", "warning": "#f08c00", "info": "#1c7ed6"}


def in_units(nbytes):
    """(divisor, unit name) that suits the largest of some byte counts."""
    for divisor, unit in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if nbytes >= divisor:
            return divisor, unit
    return 1, "bytes"


def stacked_bars(ax, frame, x, stack, value, order=None, horizontal=False):
    """One bar per value of `x`, split by `stack` (colours by modality, change kind or severity)."""
    order = order if order is not None else sorted(frame[x].unique().to_list())
    positions = list(range(len(order)))
    offset = [0] * len(order)
    if frame.height:
        wide = frame.pivot(on=stack, index=x, values=value, aggregate_function="sum")
        wide = pl.DataFrame({x: order}, schema={x: frame.schema[x]}).join(wide, on=x, how="left").fill_null(0)
        parts = [c for c in COLORS if c in wide.columns] + sorted(c for c in wide.columns if c != x and c not in COLORS)
        for part in parts:
            sizes = wide[part].to_list()
            if horizontal:
                ax.barh(positions, sizes, left=offset, label=part, color=COLORS.get(part))
            else:
                ax.bar(positions, sizes, bottom=offset, label=part, color=COLORS.get(part))
            offset = [o + h for o, h in zip(offset, sizes)]
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", va="center", color="grey")
    ticks = [str(o) for o in order]
    if horizontal:
        ax.set_yticks(positions, ticks, fontsize=7)
        ax.invert_yaxis()
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.set_xticks(positions, ticks, rotation=45, ha="right", fontsize=7)
        ax.yaxis.get_major_locator().set_params(integer=True)


# %% [markdown]
# ## Runs since the previous version
#
# **What to look for:** nights whose run committed no version because it failed (refused by the lock, a mass
# removal or an empty root refused, a full disk, a signal, killed): a cron job that fails every night looks like a
# quiet site in the versions alone. `m.runs(since, until=..., failed=True)` lists them, the most recent first, with
# what happened and what to do (as the HTML report's runs section). A latest run that failed is a CHECK.

# %%
from chorus_batch.units import shown_text  # a message's control characters as escapes, as the report shows them

if not m.records_runs:
    print("runs are not recorded in a snapshot folder: review the manifest itself to see them")
    check("latest run", None, "runs not recorded in a snapshot folder")
else:
    at = labels.index(label)
    previous = labels[at - 1] if at else None  # the runs since the version before the one reviewed ...
    following = labels[at + 1] if at + 1 < len(labels) else None  # ... up to the next one's commit, if any
    runs = m.runs(since=previous, until=following)
    failed_runs = runs.filter(pl.col("exit_code").is_not_null() & ~pl.col("exit_code").is_in([0, 1]))
    print(f"runs since {f'version {previous}' if previous else 'the first run'}: {counted(runs.height, 'run')}, "
          f"{number(runs['version'].is_not_null().sum())} committed a version, {number(failed_runs.height)} failed")
    for run in failed_runs.head(30).iter_rows(named=True):  # whole lines: a table cuts the messages
        print(f"  {run['started_at']}  exit code {run['exit_code']}: {run['outcome']}\n"
              f"      {shown_text(run['message'] or '')}\n      what to do: {run['what_to_do']}")
        if failed_runs.height > 30:
            print(f"... and {counted(failed_runs.height - 30, 'older failed run')}: m.runs({previous!r}, failed=True)")
    latest_run = runs.row(0, named=True) if runs.height else None
    latest_failed = latest_run is not None and latest_run["exit_code"] not in (None, 0, 1)
    check("latest run", not latest_failed,
          f"started {latest_run['started_at']}: exit code {latest_run['exit_code']}, {latest_run['outcome']}"
          if latest_run else "no run recorded")


# %% [markdown]
# ## 1. Versions and what each one changed
#
# **What to look for:** one version per submission; a version with unusually many `removed` or `replaced`
# files, or a modality that suddenly changes a lot. One panel per change kind, modalities stacked (the last 20
# versions up to the one reviewed, or up to `compare_to` where that is later).

# %%
display(sql("""
    SELECT label, finished_at, mode, n_added, n_removed, n_replaced, n_renamed, n_errors, n_files, total_bytes
    FROM versions ORDER BY label DESC LIMIT 20"""))

shown = sql("SELECT label FROM versions ORDER BY label")["label"].to_list()[-20:]  # up to the version reviewed
counts = m.change_counts().filter(pl.col("version").is_in(shown))
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8), sharex=True)
for ax, kind in zip(axes, ["added", "removed", "replaced", "renamed"]):
    stacked_bars(ax, counts.filter(pl.col("change") == kind), "version", "modality", "n", order=shown)
    ax.set_title(f"{kind} files")
axes[0].set_ylabel("files")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Persons present
#
# **What to look for:** every expected person is there; persons in the left tail (few files or bytes) may be
# incomplete deliveries; a person that **disappeared** since the compared version, or lost a whole modality,
# is usually a mistake (or a withdrawal that must be documented).

# %%
per_person = sql("""
    SELECT person_id, count(*) AS files, sum(size)::BIGINT AS bytes, string_agg(DISTINCT modality, ',' ORDER BY modality) AS modalities
    FROM files WHERE person_id IS NOT NULL GROUP BY person_id ORDER BY person_id""")  # one row per person
display(sql("""
    SELECT modality, count(DISTINCT person_id) AS persons, count(*) AS files, sum(size)::BIGINT AS bytes
    FROM files GROUP BY modality ORDER BY modality"""))
display(sql("""
    SELECT modality, sum(isactive)::BIGINT AS active_records, count(*) AS records
    FROM registry GROUP BY modality ORDER BY modality"""))
print("persons with the fewest files:")
display(per_person.sort("files", "bytes").head(10))

fig, (ax1, ax2) = plt.subplots(1, 2)
ax1.hist(per_person["files"].to_numpy(), bins=30)
ax1.set(title="files per person", xlabel="files", ylabel="persons")
divisor, unit = in_units(per_person["bytes"].max() or 0)
ax2.hist((per_person["bytes"] / divisor).to_numpy(), bins=30)
ax2.set(title="bytes per person", xlabel=unit, ylabel="persons")
fig.tight_layout()
plt.show()

# %%
if base is None:
    print("no earlier version: nothing to compare the persons with")
    check("persons: none disappeared", None, "no earlier version")
    check("persons: none lost a modality", None, "no earlier version")
else:
    pairs = """WITH before AS (SELECT DISTINCT person_id, modality FROM base_files WHERE person_id IS NOT NULL AND modality IS NOT NULL),
                    now AS (SELECT DISTINCT person_id, modality FROM files WHERE person_id IS NOT NULL AND modality IS NOT NULL)"""
    gone = sql(pairs + " SELECT person_id FROM before EXCEPT SELECT person_id FROM now ORDER BY 1")["person_id"].to_list()
    n_before, n_now, n_new = con.execute(pairs + """ SELECT (SELECT count(DISTINCT person_id) FROM before), (SELECT count(DISTINCT person_id) FROM now),
        (SELECT count(*) FROM (SELECT person_id FROM now EXCEPT SELECT person_id FROM before))""").fetchall()[0]
    lost = sql(pairs + """ SELECT * FROM (SELECT * FROM before EXCEPT SELECT * FROM now)
        WHERE person_id IN (SELECT person_id FROM now) ORDER BY person_id, modality""")
    print(f"{n_before:,} persons in {since}, {n_now:,} in {label}: "
          f"{number(len(gone))} {'not yet there' if later else 'disappeared'}, {number(n_new)} new, {number(lost.height)} lost a modality"
          + (f" (from {base} back to {label})" if later else ""))
    if gone:
        print(f"persons that {'are not yet in this version' if later else 'disappeared'} "
              "(their files in the compared version):")
        display(sql("""SELECT person_id, count(*) AS files, sum(size)::BIGINT AS bytes,
                              string_agg(DISTINCT modality, ',' ORDER BY modality) AS modalities
                       FROM base_files WHERE person_id IN (SELECT unnest($gone)) GROUP BY person_id ORDER BY person_id LIMIT 20""",
                    gone=gone))
    if lost.height:
        print("persons still present that lost a modality:")
        display(lost.head(20))
    check("persons: none disappeared", not gone, (f"{number(len(gone))} of {since} not in {label}" if later else
                                                  f"{number(len(gone))} disappeared since {base}")
          + (f": {', '.join(map(shown_name, gone[:5]))}" if gone else ""))
    check("persons: none lost a modality", lost.height == 0, f"{counted(lost.height, 'person-modality pair')} gone"
          + (f" (from {since} back to {label})" if later else ""))

# %% [markdown]
# ## 3. Waveform sessions
#
# **What to look for:** session starts inside the site's collection period — no 1900-01-01 or future dates
# from a wrong clock or a mis-parsed name; positive durations no longer than a few days; no gaps or spikes
# in time that suggest a missing or doubled export. Starts before `plausible_from` or after the version was
# committed are flagged (the HTML report's rule); narrow the window to the site's collection period if known.

# %%
plausible_from = PLAUSIBLE_FROM  # the HTML report's bound
committed = m.versions().filter(pl.col("label") == label)["finished_at"][0]
plausible_to = datetime.fromisoformat(committed).replace(tzinfo=None) if committed else datetime.now()
max_duration_h = 7 * 24

sessions = m.sessions(label, con=con)  # grouped in DuckDB: one row per session
# A start or duration that is not known (no stamp in the names, no WFDB header read yet) is not implausible.
implausible = sessions.filter(
    (pl.col("start") < plausible_from) | (pl.col("start") > plausible_to)
    | (pl.col("duration_s") <= 0) | (pl.col("duration_s") > max_duration_h * 3600))
print(f"{sessions.height:,} waveform sessions of {sessions['person_id'].n_unique():,} persons, "
      f"{number(implausible.height)} with an implausible start or duration, "
      f"{number(sessions['start'].null_count())} without a known start (no stamp in the names, no WFDB header)")
display(implausible.head(20))
# By the sessions' starts (from their names, or their WFDB headers: today's integer session ids carry none).
display(sessions.group_by(month=pl.col("start").dt.strftime("%Y-%m").fill_null("start unknown"))
        .agg(sessions=pl.len(), files=pl.col("files").sum(), bytes=pl.col("bytes").sum())
        .sort(pl.col("month") == "start unknown", "month", descending=[False, True]).head(20))
# None known, nothing was checked (a snapshot folder holds no header facts; nor does a `run --no-validate`): "OK  0 of
# 5 sessions start outside ..." said of sessions none of whose starts were read.
known = sessions.filter(pl.col("start").is_not_null() | pl.col("duration_s").is_not_null()).height
check("waveform sessions: plausible starts and durations", implausible.height == 0 if known or not sessions.height else None,
      f"{number(implausible.height)} of {counted(known, 'session')} with a known start or duration start outside "
      f"{plausible_from:%Y}..{plausible_to:%Y-%m-%d} or last outside 0..{max_duration_h} h"
      + (f" ({number(sessions.height - known)} of {number(sessions.height)} without either)" if sessions.height > known else "")
      if known else "no waveform sessions in this version" if not sessions.height else
      f"none of the {counted(sessions.height, 'session')} has a known start or duration (no stamp in their names, no WFDB "
      "header read: a snapshot folder holds none)")

if sessions.height:
    fig, (ax1, ax2) = plt.subplots(1, 2)
    ax1.hist(sessions["start"].drop_nulls().to_numpy(), bins=40)
    ax1.set(title="session starts", ylabel="sessions")
    ax1.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax2.hist((sessions["duration_s"].drop_nulls() / 3600).to_numpy(), bins=40)
    ax2.set(title="session durations", xlabel="hours", ylabel="sessions")
    fig.tight_layout()
    plt.show()
else:
    print("no waveform sessions in this version")

# %% [markdown]
# **Sessions per person.** A person with far fewer sessions than the others may be missing an export;
# persons with files but no waveform session may be expected (imaging only) — compare with the site's list.

# %%
sessions_per_person = (sessions.group_by("person_id")
                       .agg(sessions=pl.len(), hours=(pl.col("duration_s").sum() / 3600).round(1))
                       .sort("sessions", "person_id"))
without = per_person.join(sessions_per_person, on="person_id", how="anti")
print(f"{counted(sessions_per_person.height, 'person')} with waveform sessions; "
      f"{counted(without.height, 'person')} with files but none")
display(sessions_per_person.head(10))
if sessions_per_person.height:
    fig, ax = plt.subplots()
    low, high = sessions_per_person["sessions"].min(), sessions_per_person["sessions"].max()
    ax.hist(sessions_per_person["sessions"].to_numpy(), bins=range(low, high + 2), align="left", rwidth=0.8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(title="waveform sessions per person", xlabel="sessions", ylabel="persons")
    plt.show()

# %% [markdown]
# ## 4. File sizes
#
# **What to look for:** **empty files** (a failed export or copy), and files far smaller or larger than the
# rest of their modality (truncated, or a whole folder packed into one file). Sizes on a log scale; listed as
# outliers (the HTML report's rule, `size_flags`): non-empty files beyond 3 IQR of their modality's log10-sizes *and* at least
# 10× beyond its quartiles, in modalities with at least 10 non-empty files.

# %%
display(sql("""
    SELECT modality, count(*) AS files, count(*) FILTER (WHERE size = 0) AS empty,
           min(size) AS min, median(size) AS median, max(size) AS max, sum(size)::BIGINT AS bytes
    FROM files GROUP BY modality ORDER BY modality"""))

size_stats, flagged = size_flags(con)  # the HTML report's rule, from the library (in DuckDB)
n_empty = int(size_stats["empty"].sum())
outliers = flagged.filter(pl.col("flag") != "empty").select("modality", "srcfile", "size", "flag", "modality_median")
print(f"{counted(n_empty, 'empty file')}, {counted(outliers.height, 'size outlier')}")
if n_empty:
    display(sql("SELECT modality, srcfile, person_id, version_valid FROM files WHERE size = 0 ORDER BY srcfile LIMIT 20"))
if outliers.height:
    display(outliers.head(20))
check("no empty files", n_empty == 0, f"{number(n_empty)} empty")
check("no size outliers", outliers.height == 0, f"{counted(outliers.height, 'file')} far from their modality's sizes")

boxes = {r["modality"]: r for r in size_stats.iter_rows(named=True) if r["nonempty"]}
present = [x for x in MODALITIES if x in boxes]
if present:
    fig, (ax1, ax2) = plt.subplots(1, 2)
    # Boxes from the statistics (quartiles, whiskers within the outlier fences), not from every size.
    ax1.bxp([{"med": 10 ** boxes[x]["median"], "q1": 10 ** boxes[x]["q1"], "q3": 10 ** boxes[x]["q3"],
              "whislo": boxes[x]["low"] or boxes[x]["min"], "whishi": boxes[x]["high"] or boxes[x]["max"],
              "fliers": outliers.filter(pl.col("modality") == x)["size"].head(500).to_numpy()} for x in present])
    ax1.set_xticks(range(1, len(present) + 1), present)
    ax1.set(yscale="log", title="size per modality (non-empty files)", ylabel="bytes")
    bins = sql("""SELECT modality, floor(log10(size) * 10) / 10 AS bin, count(*) AS n FROM files
                  WHERE size > 0 GROUP BY ALL ORDER BY modality, bin""")  # tenths of a decade
    for x in present:
        part = bins.filter(pl.col("modality") == x)
        ax2.stairs(part["n"].to_numpy(), [*part["bin"].to_list(), part["bin"][-1] + 0.1], label=x, color=COLORS.get(x))
    ax2.set(title="size distribution", xlabel="log10(bytes)", ylabel="files")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## 5. Duplicate contents
#
# **What to look for:** the same non-empty content (MD5) at more than one path — a file exported twice under
# two names, or, the serious case, one content in **more than one person's** folder (`persons` > 1).

# %%
twins = """WITH d AS (SELECT md5, count(*) AS paths, first(size) AS size, count(DISTINCT person_id) AS persons
                    FROM files WHERE size > 0 AND md5 IS NOT NULL GROUP BY md5 HAVING count(*) > 1)"""
n_dups, extra, wasted, n_cross = con.execute(twins + """ SELECT count(*), coalesce(sum(paths - 1), 0)::BIGINT,
    coalesce(sum((paths - 1) * size), 0)::BIGINT, count(*) FILTER (WHERE persons > 1) FROM d""").fetchall()[0]
print(f"{counted(n_dups, 'content')} at more than one path: {counted(extra, 'extra copy', 'extra copies')}, "
      f"{number(wasted)} bytes; {number(n_cross)} shared between persons")
display(sql(twins + """ SELECT d.*, (SELECT list(srcfile ORDER BY srcfile) FROM files f WHERE f.md5 = d.md5 AND f.size > 0) AS srcfiles
    FROM d ORDER BY paths DESC, md5 LIMIT 20"""))
display(sql("""
    SELECT modality, count(*) AS files_with_a_twin
    FROM files WHERE size > 0 AND md5 IN (SELECT md5 FROM files WHERE size > 0 AND md5 IS NOT NULL GROUP BY md5 HAVING count(*) > 1)
    GROUP BY modality ORDER BY modality"""))
check("no duplicate contents", n_dups == 0, f"{number(n_dups)} duplicated contents, {number(n_cross)} across persons")

# %% [markdown]
# ## 6. Scan errors and unparseable paths
#
# **What to look for:** files the scan could not read (permissions, broken links, files changing while hashed)
# are missing from the submission; paths that fit no naming pattern are tracked but without person, session
# or date, so they cannot be linked. `scan_errors` holds what this version's run recorded; `parse_error` in
# the file list shows every current unparseable path, including those recorded by earlier runs.

# %%
errors_by_kind = sql("""
    SELECT kind, count(*) AS n, min(srcfile) AS example FROM scan_errors GROUP BY kind ORDER BY n DESC, kind""")
by_reason = sql("""
    SELECT modality, split_part(parse_error, ':', 1) AS reason, count(*) AS n, min(srcfile) AS example
    FROM files WHERE parse_error IS NOT NULL GROUP BY ALL ORDER BY n DESC, modality""")
n_unparseable = int(by_reason["n"].sum())
print(f"{counted(int(errors_by_kind['n'].sum()), 'scan error')} recorded with {label}; "
      f"{counted(n_unparseable, 'current unparseable path')}")
display(errors_by_kind)
display(by_reason.head(20))
display(m.scan_errors(label).head(20))
check("no scan errors", errors_by_kind.height == 0, f"{number(errors_by_kind['n'].sum())} recorded with this version")
check("no unparseable paths", n_unparseable == 0, f"{number(n_unparseable)} current paths fit no pattern")

if errors_by_kind.height or by_reason.height:
    fig, (ax1, ax2) = plt.subplots(1, 2)
    ax1.barh(errors_by_kind["kind"].to_list(), errors_by_kind["n"].to_list())
    ax1.set(title="scan errors of this version, by kind", xlabel="files")
    reasons = [f"{mod}: {why}"[:45] for mod, why in by_reason.select("modality", "reason").iter_rows()]
    ax2.barh(reasons, by_reason["n"].to_list())
    ax2.set(title="unparseable paths, by reason", xlabel="files")
    ax2.tick_params(axis="y", labelsize=7)
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    plt.show()
else:
    print("no scan errors and no unparseable paths")

# %% [markdown]
# ## 7. Validation findings
#
# **What to look for:** what `validate` found in the files' contents (for example a header that does not match
# its data, or DICOM tags that disagree with the path). Errors block the merge, warnings need a look.
# A version that was not validated (`run --no-validate`) has no findings either: the checklist says CHECK.

# %%
# validated None: a snapshot folder does not record it; rules: those of an earlier release, if those checked it
findings, validated, rules = m.validation(label)  # read at once: one state of the manifest
if rules:
    print(other_rules_advice(label, rules, labels[-1], db, remote=manifest_name is not None))
if findings.height == 0 and validated is False:
    print(unvalidated_advice(label, labels[-1], db, remote=manifest_name is not None))
    check("validation findings", False, "not validated")
elif findings.height == 0:
    # None: a snapshot folder does not record whether `validate` checked the version (the manifest does)
    print(f"no validation findings recorded for {label}" + (" (validated: nothing found)" if validated else
          " (a snapshot folder does not record whether it was validated: review the manifest to know)"))
    check("validation findings", True if validated else None, "none found" if validated else "not known whether validated")
else:
    by_rule = (findings.group_by("severity", "rule").agg(n=pl.len(), example=pl.col("srcfile").min())
               .sort("n", "rule", descending=[True, False]))
    display(by_rule.head(20))
    display(findings.head(20))
    serious = findings.filter(pl.col("severity").str.to_lowercase() != "info")  # errors block, warnings need a look
    check("validation findings", serious.height == 0,
          ", ".join(f"{number(n)} {word}" for word, n in severity_counts(findings)))  # as the HTML report says them
    rank = {"error": 0, "critical": 0, "warning": 1, "warn": 1}
    order = (by_rule.with_columns(rank=pl.col("severity").str.to_lowercase().replace_strict(rank, default=2))
             .group_by("rule").agg(pl.col("rank").min(), pl.col("n").sum()).sort("rank", "n", "rule", descending=[False, True, False]))
    fig, ax = plt.subplots(figsize=(11, 1 + 0.25 * order.height))
    stacked_bars(ax, by_rule, "rule", "severity", "n", order=order["rule"].to_list(), horizontal=True)
    ax.set(title="validation findings by rule and severity", xlabel="findings")
    fig.tight_layout()
    plt.show()
if rules:
    check("validation findings", False, f"{checks['validation findings'][1]}; by other rules than this release's")

# %% [markdown]
# ## 8. What this version deleted or replaced
#
# **What to look for:** in a full-mode submission `removed` (gone) and `replaced` (same path, new content)
# should be rare and explained — a corrected export, a withdrawal. `renamed` keeps the content. More than
# `large_change_share` of the compared version's files removed or replaced is flagged, overall and per modality.

# %%
if base is None:
    print(f"{label} is the first version: nothing to compare with (set compare_to to compare two versions)")
    check(f"removed + replaced <= {large_change_share:.0%}", None, "no earlier version")
else:
    # The view `diff` of the DuckDB database holds `m.diff(base, label)`'s rows: their counts and first rows come
    # into memory, not the diff (a version that replaced every file of a large site).
    by_change = sql("SELECT coalesce(modality, 'Other') AS modality, change, count(*)::UINTEGER AS n FROM diff GROUP BY ALL")
    base_by_modality = sql("SELECT coalesce(modality, 'Other') AS modality, count(*)::UINTEGER AS base_files FROM base_files GROUP BY 1")
    kinds = ["added", "removed", "replaced", "renamed"]
    per_modality = (by_change.pivot(on="change", index="modality", values="n")
                    .join(base_by_modality, on="modality", how="full", coalesce=True)
                    .with_columns([pl.lit(0, pl.UInt32).alias(k) for k in kinds if k not in by_change["change"]])
                    .fill_null(0)
                    .with_columns(share=((pl.col("removed") + pl.col("replaced")) / pl.max_horizontal("base_files", 1)))
                    .with_columns(flag=pl.col("share") > large_change_share)
                    .select("modality", "base_files", *kinds, "share", "flag").sort("modality"))
    n_touched = int(per_modality["removed"].sum() + per_modality["replaced"].sum())
    share = n_touched / max(n_base_files, 1)
    large = share > large_change_share
    print(f"{label} against {since}: " + ", ".join(f"{number(per_modality[k].sum())} {k}" for k in kinds)
          + (f" (read from {base} back to {label}: `removed` are files {base} has and {label} has not, `added` the "
             f"reverse; {label} deleted nothing of them)" if later else ""))
    display(Markdown(
        f"**{'⚠ LARGE CHANGE' if large else 'OK'}:** {number(n_touched)} of {counted(n_base_files, 'file')} removed or replaced "
        f"({share:.1%}; threshold `large_change_share` = {large_change_share:.0%})"
        + (f"; over the threshold in: {', '.join(per_modality.filter('flag')['modality'])}" if per_modality["flag"].any() else "")))
    display(per_modality)
    display(sql("""SELECT change, coalesce(modality, 'Other') AS modality, srcfile, size, old_md5,
                          CASE WHEN change <> 'removed' THEN md5 END AS new_md5
                   FROM diff WHERE change IN ('removed', 'replaced') ORDER BY change, srcfile LIMIT 20"""))
    if base == (labels[labels.index(label) - 1] if labels.index(label) else None):
        print("the run's own change set of this version (same as the diff against the previous version):")
        display(sql("SELECT change, modality, count(*) AS files, sum(size)::BIGINT AS bytes FROM changes "
                    "WHERE version = $v GROUP BY ALL ORDER BY change, modality", v=label))
    check(f"removed + replaced <= {large_change_share:.0%}", not large,
          f"{share:.1%} of {counted(n_base_files, 'file')} ({number(n_touched)}) against {since}"
          + (f", read from it back to {label}" if later else ""))

    fig, (ax1, ax2) = plt.subplots(1, 2)
    stacked_bars(ax1, by_change, "modality", "change", "n",
                 order=per_modality["modality"].to_list())
    ax1.set(title=f"changes against {since}" + (" (read backwards)" if later else ""), ylabel="files")
    ax2.bar(per_modality["modality"].to_list(), (per_modality["share"] * 100).to_list(),
            color=[COLORS["removed"] if f else COLORS["Metadata"] for f in per_modality["flag"]])
    ax2.axhline(large_change_share * 100, color=COLORS["removed"], linestyle="--", label="large_change_share")
    ax2.set(title="removed + replaced, share of the compared files", ylabel="%")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## 9. The history of one file
#
# **What to look for:** how a file came and went. Each row is one version of the file: the change that
# created it (`change`, and `old_srcfile` for a rename) and the one that ended it (`ended_by`, `renamed_to`).
# An example that changed is picked; ask for any path with `m.history("OMOP/person.csv")`.

# %%
source = "diff" if base else "(SELECT * FROM changes WHERE version = $v)"  # the comparison's, else the run's changes
changed = sql(f"""SELECT srcfile FROM {source} WHERE change IN ('replaced', 'renamed', 'removed')
                  ORDER BY CASE change WHEN 'replaced' THEN 0 WHEN 'renamed' THEN 1 ELSE 2 END, srcfile LIMIT 1""",
              **({} if base else {"v": label}))
example = changed["srcfile"][0] if changed.height else con.execute("SELECT min(srcfile) FROM files").fetchall()[0][0]
if example is None:
    print("no files in this version")
else:
    print(f"history of {shown_name(example)}")
    display(m.history(example).select("change", "old_srcfile", "ended_by", "renamed_to", "srcfile", "md5", "size",
                                      "version_valid", "version_invalid"))

# %% [markdown]
# ## Summary
#
# `CHECK` items need a look (or an explanation in the submission notes) before the merge.

# %%
print(f"review of {label}" + (f" against {since}" if base else " (first version)") + f" in {db}")
for item, (state, detail) in checks.items():
    print(f"  {state:<5}  {item}: {detail}")
n_check = sum(state == "CHECK" for state, _ in checks.values())
print(f"{counted(n_check, 'item')} to check" if n_check else "all checks passed")
con.close()
m.close()  # and the DuckDB's scratch folder
