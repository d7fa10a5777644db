"""`chorus-batch import-config`: a chorus-upload config.toml becomes a chorus.toml that chorus-batch reads,
secrets are never copied or shown, and what cannot be translated is a warning."""

from __future__ import annotations

import os
import stat
import time
import tomllib
from pathlib import Path

import polars as pl
import pytest

from chorus_batch.classify import CURRENT, DEFAULT_PATTERNS, build_patterns, classify
from chorus_batch.config import load_config
from chorus_batch.upstream.config import _TAILS, UPSTREAM_PATTERNS, convert_config, write_config
from conftest import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chorus-upload"

# Fake secrets: none of them may appear in stdout, stderr or the written file.
SAS = "sv=2024-08-04&ss=b&srt=co&sp=rwl&se=2026-01-01&sig=SECRETsasSIGNATURE0123456789%3D"
ACCOUNT_KEY = "FAKEaccountKEY0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH+/0123456789abcd=="
CONNECTION_STRING = ("DefaultEndpointsProtocol=https;AccountName=mghb2ailanding;AccountKey=FAKEconnKEY9876543210zyxw"
                     "vutsrqponmlkjihgfedcba==;EndpointSuffix=core.windows.net")
AWS_KEY_ID = "AKIAFAKEKEYID0123456"
AWS_SECRET = "FAKEawsSECRETaccessKEY/0123456789abcdefghij"
AWS_SESSION = "FAKEawsSESSIONtoken0123456789+/abcdefghijklmnop=="
URL_SIG = "sv=2024-08-04&sp=rl&sig=URLsigSECRET0987654321%3D"
SECRETS = (SAS, ACCOUNT_KEY, CONNECTION_STRING, AWS_KEY_ID, AWS_SECRET, AWS_SESSION, URL_SIG)

WITH_SECRETS = f"""
[configuration]
supported_modalities = "OMOP,Images,Waveforms,Metadata"
page_size = 1000
num_threads = 8

[journal]
journaling_mode = "append"
  [journal.local]
  path = "/srv/chorus/journal.db"
  [journal.source]
  path = "az://mgh/journal.db"
    [journal.source.auth]
    auth_mode = "sas_token"
    azure_account_name = "mghb2ailanding"
    azure_sas_token = "{SAS}"

[central_path]
path = "az://mgh/"
azure_container = "mgh"
  [central_path.auth]
  auth_mode = "sas_token"
  azure_account_url = "https://upload.chorus4ai.org"
  azure_account_name = "mghb2ailanding"
  azure_sas_token = "{SAS}"
  azure_account_key = "{ACCOUNT_KEY}"
  azure_connection_string = "{CONNECTION_STRING}"

[site_path]
  [site_path.default]
  path = "/mnt/data/site"
  [site_path.OMOP]
  path = "/mnt/data/site/"
  [site_path.Images]
  path = "s3://chorus-images/site"
    [site_path.Images.auth]
    s3_container = "chorus-images"
    aws_access_key_id = "{AWS_KEY_ID}"
    aws_secret_access_key = "{AWS_SECRET}"
    aws_session_token = "{AWS_SESSION}"
    aws_profile = "chorus"
  [site_path.Waveforms]
  path = "az://bedside/export?{URL_SIG}"
"""

SECRET_KEYS = ("journal.source.auth.azure_sas_token", "central_path.auth.azure_sas_token",
               "central_path.auth.azure_account_key", "central_path.auth.azure_connection_string",
               "site_path.Images.auth.aws_access_key_id", "site_path.Images.auth.aws_secret_access_key",
               "site_path.Images.auth.aws_session_token", "site_path.Waveforms.path")


def _config(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _converted(tmp_path: Path, out) -> Path:
    """stdout of a conversion as a chorus.toml file (where load_config reads it)."""
    path = tmp_path / "chorus.toml"
    path.write_text(out.stdout, encoding="utf-8")
    return path


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("chorus-batch: warning: ")]


@pytest.mark.parametrize("name,mode_from", [("config.toml", "journal.journaling_mode"),
                                            ("config_v1.toml", "configuration.journaling_mode")])
def test_both_chorus_upload_formats_convert(tmp_path, name, mode_from):
    out = cli("import-config", str(FIXTURES / name))
    assert out.returncode == 1, out.stderr  # the central path is a local folder: a warning
    assert "Traceback" not in out.stderr
    config = load_config(_converted(tmp_path, out))
    assert config.site.root == "/data/site"
    assert config.site.roots == {}
    assert config.run.mode == "full"
    assert config.central.to is None
    assert f"# from {mode_from} = \"full\"" in out.stdout
    # the journal is imported on its own; its paths and page_size are named as not needed
    assert 'chorus-batch import-journal "/data/journal.db" --db chorus_manifest.sqlite' in out.stdout
    assert "configuration.page_size" in out.stdout
    (warning,) = _warnings(out.stderr)
    assert str(FIXTURES / name) in warning and 'central_path.path = "/data/central"' in warning
    assert "--to" in warning and "az://" in warning
    assert '# to = "az://<container>/"' in out.stdout


def test_secrets_are_never_copied_nor_shown(tmp_path):
    source = _config(tmp_path, WITH_SECRETS)
    printed = cli("import-config", str(source))
    written = tmp_path / "out" / "chorus.toml"
    written.parent.mkdir()
    wrote = cli("import-config", str(source), "--out", str(written))
    assert printed.returncode == wrote.returncode == 1
    assert wrote.stdout == ""  # with --out, stdout gets nothing; the file gets the text
    assert written.read_text(encoding="utf-8") == printed.stdout
    for text in (printed.stdout, printed.stderr, wrote.stdout, wrote.stderr, written.read_text(encoding="utf-8")):
        for secret in SECRETS:
            assert secret not in text
        for fragment in ("sig=", "AccountKey=", "FAKE"):
            assert fragment not in text
    # each secret is named by its key, with the file, masked, and with what to do
    warnings = _warnings(printed.stderr)
    assert _warnings(wrote.stderr) == warnings
    for key in SECRET_KEYS:
        (line,) = [w for w in warnings if f": {key} = " in w]
        assert str(source) in line and "****" in line and ("not copied" in line or "copied without it" in line)
        assert "rotate" in line
    # the file names the environment variables instead
    assert 'sas_token_env = "AZURE_STORAGE_SAS_TOKEN"' in printed.stdout
    assert 'account_key_env = "AZURE_STORAGE_KEY"' in printed.stdout
    assert 'connection_string_env = "AZURE_STORAGE_CONNECTION_STRING"' in printed.stdout
    assert "AWS_ACCESS_KEY_ID" in printed.stdout and "AWS_SECRET_ACCESS_KEY" in printed.stdout
    config = load_config(written)
    assert config.azure.account_url == "https://upload.chorus4ai.org"
    assert config.azure.sas_token_env == "AZURE_STORAGE_SAS_TOKEN"
    assert config.s3.profile == "chorus"
    assert config.central.to == "az://mgh/"
    assert config.run.mode == "append"
    assert config.site.root == "/mnt/data/site"
    # OMOP's path is the default one (a trailing slash apart); the others have their own roots, the
    # Waveforms URL without its SAS query
    assert config.site.roots == {"Images": "s3://chorus-images/site", "Waveforms": "az://bedside/export"}
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert "wrote" in wrote.stderr and str(written) in wrote.stderr



def test_chorus_upload_templates_placeholders_are_not_taken_for_a_shown_secret(tmp_path):
    """chorus-upload's config.toml.template, left with its placeholder credentials: each placeholder is inside the
    name of the key that held it (aws_access_key_id = "access_key_id"), which the warning gives; that was taken for
    a secret shown, an internal error (exit 3) and nothing written. A secret of its own is still never shown."""
    source = _config(tmp_path, """
[configuration]
supported_modalities = "OMOP,Images,Waveforms"
journaling_mode = "snapshot"
[central_path]
path = "az://test/"
azure_sas_token = "sastoken"
azure_connection_string = "connection_string"
[site_path.default]
path = "/mnt/data/site"
[site_path.Images]
path = "s3://container/path"
aws_access_key_id = "access_key_id"
aws_secret_access_key = "secret_access"
aws_session_token = "session_token"
""")
    done = cli("import-config", str(source))
    assert done.returncode == 1, done.stderr
    assert "internal error" not in done.stderr
    assert "site_path.Images.aws_access_key_id = **** (13 characters, not shown)" in done.stderr
    for placeholder in ("access_key_id", "secret_access", "session_token", "connection_string"):
        assert f'"{placeholder}"' not in done.stdout + done.stderr  # (never as a value)
    load_config(_converted(tmp_path, done))

def test_a_clean_config_converts_without_warnings(tmp_path):
    source = _config(tmp_path, """
[configuration]
supported_modalities = "OMOP,Images,Waveforms,Metadata"
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/site-a"
  [central_path.auth]
  auth_mode = "login"
  azure_account_name = "mghb2ailanding"
[site_path.default]
path = "/data/site"
[site_path.Waveforms]
path = "/mnt/bedside/export"
pattern = "{patient_id:w}/Waveforms/{filepath}"
""")
    out = cli("import-config", str(source))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    data = tomllib.loads(out.stdout)
    assert data["site"] == {"root": "/data/site", "roots": {"Waveforms": "/mnt/bedside/export"}}
    assert data["central"] == {"to": "az://mgh/site-a/"}
    assert data["azure"] == {"account_name": "mghb2ailanding"}  # login: no variables, DefaultAzureCredential
    assert "DefaultAzureCredential" in out.stdout and 'auth.auth_mode = "login"' in out.stdout
    assert "[patterns]" not in out.stdout  # chorus-upload's default pattern needs none
    load_config(_converted(tmp_path, out))


@pytest.mark.parametrize("line,mode,warned", [('journaling_mode = "snapshot"', "full", False),
                                              ('journaling_mode = "append"', "append", False),
                                              ("", "append", True)])
def test_journaling_mode_becomes_run_mode(tmp_path, line, mode, warned):
    source = _config(tmp_path, f'[journal]\n{line}\n[central_path]\npath = "az://mgh/"\n'
                               '[site_path.default]\npath = "/data/site"\n')
    converted = convert_config(source)
    assert tomllib.loads(converted.text)["run"]["mode"] == mode
    assert any("journaling_mode" in w and "append" in w for w in converted.warnings) == warned


def test_a_custom_pattern_is_a_warning_and_a_starting_point(tmp_path):
    source = _config(tmp_path, """
[central_path]
path = "az://mgh/"
[site_path.default]
path = "/data/site"
[site_path.Waveforms]
pattern = "Person{patient_id:w}/Waveforms/{filepath}"
[site_path.Images]
pattern = "{patient_id:w}/Images/{filepath}"
versioned = true
""")
    out = cli("import-config", str(source))
    assert out.returncode == 1
    warnings = _warnings(out.stderr)
    assert any('site_path.Waveforms.pattern = "Person{patient_id:w}/Waveforms/{filepath}"' in w
               and "not translated" in w for w in warnings)
    assert any("site_path.Images.versioned = true" in w for w in warnings)
    assert not any("site_path.Images.pattern" in w for w in warnings)  # upstream's default: nothing to translate
    # the starting point is commented out; uncommented, chorus-batch reads it and classifies with it
    (hint,) = [line for line in out.stdout.splitlines() if line.startswith("# Waveforms = [")]
    config_path = _converted(tmp_path, out)
    config_path.write_text(out.stdout.replace(hint, hint[2:]), encoding="utf-8")
    config = load_config(config_path)
    assert list(config.patterns) == ["Waveforms"]
    paths = ["Person0123/Waveforms/EEG/S01/S01.edf", "0123/Waveforms/EEG/S01/S01.edf"]
    found = classify(pl.DataFrame({"srcfile": paths}), build_patterns(config.patterns))
    first, second = found.to_dicts()
    assert (first["modality"], first["person_id"], first["session_id"]) == ("Waveforms", "0123", "S01")
    assert second["parse_error"] is not None  # no longer this site's Waveforms layout


def test_the_starting_points_end_in_chorus_batch_current_layouts():
    for modality, tail in _TAILS.items():
        current = next(p.regex for p in DEFAULT_PATTERNS if p.modality == modality and p.layout == CURRENT)
        assert current.endswith(tail), modality


def test_upstream_default_patterns_need_no_hint(tmp_path):
    sections = "\n".join(f'[site_path.{m}]\npattern = "{p.lower()}"' for m, p in UPSTREAM_PATTERNS.items())
    converted = convert_config(_config(tmp_path, f'[journal]\njournaling_mode = "full"\n[central_path]\n'
                                                 f'path = "az://mgh/"\n[site_path.default]\npath = "/s"\n{sections}'))
    assert converted.warnings == []
    assert "[patterns]" not in converted.text


def test_modalities_chorus_upload_did_not_track(tmp_path):
    converted = convert_config(_config(tmp_path, """
[configuration]
supported_modalities = "OMOP,Waveforms"
journaling_mode = "full"
[central_path]
path = "az://mgh/"
[site_path.default]
path = "/data/site"
[site_path.Genomics]
path = "/data/genomics"
"""))
    assert any("leaves out Images" in w for w in converted.warnings)
    assert any("site_path.Genomics" in w and "not converted" in w for w in converted.warnings)
    assert '# exclude = ["*/Images/*"]' in converted.text
    assert "Metadata" not in "".join(w for w in converted.warnings if "leaves out" in w)  # chorus-upload adds it


def test_unknown_keys_are_named_and_secret_looking_ones_hidden(tmp_path):
    converted = convert_config(_config(tmp_path, """
[configuration]
supported_modalities = "OMOP,Images,Waveforms,Metadata"
colour = "blue"
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
client_secret = "FAKEclientSECRETvalue123"
[site_path.default]
path = "data/site"
[extras]
note = "x"
"""))
    (unknown,) = [w for w in converted.warnings if "not understood" in w]
    for key in ("configuration.colour", "central_path.client_secret", "extras"):
        assert key in unknown
    assert any("central_path.client_secret = ****" in w for w in converted.warnings)
    assert "FAKEclientSECRET" not in converted.text + "".join(converted.warnings)
    assert any('site_path.default.path = "data/site" is relative' in w for w in converted.warnings)



def test_a_misspelt_key_is_named_with_the_key_probably_meant(tmp_path):
    """journaling_mod = "full" was named "not understood" alone, next to a warning that journaling_mode is missing
    (so [run] mode = "append"): the key meant is said, as chorus.toml's own unknown settings are."""
    converted = convert_config(_config(tmp_path, """
[configuration]
journaling_mod = "full"
upload_methd = "azcli"
[central_path]
path = "az://mgh/"
azure_acount_key = "FAKEmisspeltACCOUNTkey0123456789=="
[site_path.default]
path = "/data/site"
"""))
    (unknown,) = [w for w in converted.warnings if "not understood" in w]
    assert "configuration.journaling_mod (did you mean configuration.journaling_mode?)" in unknown
    assert "configuration.upload_methd (did you mean configuration.upload_method?)" in unknown
    assert "central_path.azure_acount_key (did you mean central_path.azure_account_key?)" in unknown
    assert "FAKEmisspelt" not in converted.text + "".join(converted.warnings)

@pytest.mark.parametrize("content,message", [
    (None, "chorus-upload config not found"),
    ("[central_path\npath = 1", "is not valid TOML"),
    ('[site]\nroot = "/data/site"\n', "is not a chorus-upload config"),
    ('title = "something else"\n', "is not a chorus-upload config"),
])
def test_bad_input_is_a_usage_error_without_traceback(tmp_path, content, message):
    source = tmp_path / "config.toml"
    if content is not None:
        source.write_text(content, encoding="utf-8")
    out = cli("import-config", str(source))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith(f"chorus-batch: error: {source} {message}") or \
        out.stderr.startswith(f"chorus-batch: error: {message}: {source}")
    assert "fix:" in out.stderr and "Traceback" not in out.stderr



@pytest.mark.parametrize("content,line", [
    ('[site_path.default]\npath = "/data/site"\n[configuration]\nsupported_modalities = ["OMOP", "Images]\n', 4),
    ('[site_path.default]\npath = "/data/site"\n[central_path.auth]\n'
     'azure_account_key = "FAKEsecretKey0123456789abcdef==\n', 4),
])
def test_a_quote_left_open_is_named_by_its_line_as_in_chorus_toml_and_no_secret_is_echoed(tmp_path, content, line):
    """import-config's TOML errors are said as chorus.toml's are (which value, which line), but the fix never
    writes the line back: a chorus-upload config's value may be a secret."""
    source = tmp_path / "config.toml"
    source.write_text(content, encoding="utf-8")
    out = cli("import-config", str(source))
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert f"the value on line {line} opens a quote (\") that is not closed" in out.stderr
    assert f"where: {source}, line {line}" in out.stderr
    assert "FAKEsecret" not in out.stderr and "Traceback" not in out.stderr


def test_out_refuses_to_overwrite_unless_forced(tmp_path):
    source = FIXTURES / "config.toml"
    target = tmp_path / "chorus.toml"
    target.write_text("# mine\n", encoding="utf-8")
    target.chmod(0o644)
    refused = cli("import-config", str(source), "--out", str(target))
    assert refused.returncode == 2 and "exists" in refused.stderr and "--force" in refused.stderr
    assert target.read_text(encoding="utf-8") == "# mine\n"
    forced = cli("import-config", str(source), "--out", str(target), "--force")
    assert forced.returncode == 1, forced.stderr
    assert target.read_text(encoding="utf-8").startswith("# chorus.toml converted from")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["chorus.toml"]  # no temporary file left
    # never over the config being converted, even with --force
    copy = tmp_path / "upstream.toml"
    copy.write_bytes(source.read_bytes())
    same = cli("import-config", str(copy), "--out", str(copy), "--force")
    assert same.returncode == 2 and copy.read_bytes() == source.read_bytes()


def test_out_under_a_file_is_said_to_be_under_a_file(tmp_path):
    """--out in a "folder" that is a file: it was said not to exist, with "create it" (which mkdir refuses)."""
    (tmp_path / "notes.txt").write_text("mine\n", encoding="utf-8")
    out = cli("import-config", str(FIXTURES / "config.toml"), "--out", str(tmp_path / "notes.txt" / "chorus.toml"))
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert "notes.txt is a file, not a folder" in out.stderr and "does not exist" not in out.stderr
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine\n"


def test_help_has_an_example_and_the_exit_codes():
    out = cli("import-config", "--help")
    assert out.returncode == 0
    # (not `> chorus.toml`: the shell empties an existing chorus.toml before anything is checked)
    assert "chorus-batch import-config" in out.stdout and "--out chorus.toml" in out.stdout
    assert "> chorus.toml" not in out.stdout
    assert "converted, with warnings (secrets not copied, settings not translated)" in out.stdout
    assert "exit codes:" in out.stdout


@pytest.mark.parametrize("force", [False, True])
def test_out_never_replaces_a_fifo(tmp_path, force):
    """--out over a FIFO (a device node alike, e.g. /dev/full) is refused: the temporary file renamed over
    it would swap the node itself for a regular file."""
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    out = cli("import-config", str(FIXTURES / "config.toml"), "--out", str(fifo), *(["--force"] if force else []))
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"chorus-batch: error: --out {fifo} is not a regular file (a FIFO (named pipe)); "
                                 "it is not replaced")
    assert "fix:" in out.stderr and "choose another --out" in out.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO (never opened: that would block)
    assert [p.name for p in tmp_path.iterdir()] == ["fifo.toml"]  # no temporary file left


@pytest.mark.parametrize("dangling", [False, True])
def test_out_never_replaces_a_symbolic_link(tmp_path, dangling):
    target = tmp_path / "real.toml"
    if not dangling:
        target.write_text("# mine\n", encoding="utf-8")
    link = tmp_path / "chorus.toml"
    link.symlink_to(target)
    for force in ([], ["--force"]):
        out = cli("import-config", str(FIXTURES / "config.toml"), "--out", str(link), *force)
        assert out.returncode == 2, out.stderr
        assert out.stdout == ""
        assert f"--out {link} is not a regular file (a symbolic link to {target}); it is not replaced" in out.stderr
        assert "fix:" in out.stderr and "pass the file it points to as --out" in out.stderr
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert target.read_text(encoding="utf-8") == "# mine\n" if not dangling else not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["chorus.toml"] + ([] if dangling else ["real.toml"]))
    # the link's target itself, a regular file, is replaced with --force
    if not dangling:
        out = cli("import-config", str(FIXTURES / "config.toml"), "--out", str(target), "--force")
        assert out.returncode == 1, out.stderr
        assert target.read_text(encoding="utf-8").startswith("# chorus.toml converted from")
        assert link.is_symlink()


@pytest.mark.parametrize("path", ["C:\\data\\site", "C:/data/site", "\\\\server\\share\\site", "D:\\"])
def test_a_windows_path_is_kept_and_named(tmp_path, path):
    waveforms = path.rstrip("\\/") + "\\waveforms"
    # TOML literal strings: the backslashes as they are
    source = _config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
[site_path.default]
path = '{path}'
[site_path.Waveforms]
path = '{waveforms}'
""")
    out = cli("import-config", str(source))
    assert "Traceback" not in out.stderr
    data = tomllib.loads(out.stdout)
    assert data["site"] == {"root": path, "roots": {"Waveforms": waveforms}}  # as given
    warnings = _warnings(out.stderr)
    for key in ("site_path.default.path", "site_path.Waveforms.path"):
        found = [w for w in warnings if f"{key} = " in w and "is a Windows path" in w]
        assert len(found) == (1 if os.name != "nt" else 0), warnings
        for warning in found:
            assert warning.startswith(f"chorus-batch: warning: {source}: {key} = ")
            assert "use this chorus.toml there" in warning and "the Windows machine the site runs on" in warning
    assert not any("is relative" in w for w in warnings)  # a drive or a share is not a relative path
    assert out.returncode == (1 if os.name != "nt" else 0), out.stderr
    # the backslashes are valid TOML, and chorus.toml's own reader takes the file
    config = load_config(_converted(tmp_path, out))
    # (read here, not on Windows, it is a folder below the chorus.toml's: what the warning says)
    assert config.site.root == (str(Path(path)) if os.name == "nt" else str(tmp_path / path))


@pytest.mark.parametrize("path", ["/data/site", "//data/site", "data\\site", "az://c/site"])
def test_a_posix_or_relative_path_is_not_a_windows_path(tmp_path, path):
    converted = convert_config(_config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
[site_path.default]
path = '{path}'
"""))
    assert not any("Windows" in w for w in converted.warnings), converted.warnings


PASSWORD = "PASSword0123456789"


def test_a_password_in_a_url_is_named_as_one(tmp_path):
    source = _config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "az://chorus:{PASSWORD}@mgh/site"
[site_path.default]
path = "/data/site"
[site_path.Images]
path = "https://user:{PASSWORD}/x?y#z@acct.blob.core.windows.net/c/images"
[site_path.Waveforms]
path = "s3://aws:{PASSWORD}@bucket/wave"
""")
    out = cli("import-config", str(source))
    assert out.returncode == 1, out.stderr
    for text in (out.stdout, out.stderr):
        assert PASSWORD not in text and "PASSword" not in text and "x?y#z" not in text
    warnings = _warnings(out.stderr)
    for key, shown in (("central_path.path", "az://chorus:****@mgh/site"),
                       ("site_path.Images.path", "https://user:****@acct.blob.core.windows.net/c/images"),
                       ("site_path.Waveforms.path", "s3://aws:****@bucket/wave")):
        (warning,) = [w for w in warnings if f": {key} = " in w]
        assert f'{key} = "{shown}": a URL with a password' in warning
        assert "rotate it" in warning and "copied without it" in warning
        assert "does not sign in with a password in a URL" in warning
        assert "SAS token" not in warning  # no SAS token was found
        assert ("[azure]" in warning) == (key != "site_path.Waveforms.path")
        assert ("AWS" in warning) == (key == "site_path.Waveforms.path")
    data = tomllib.loads(out.stdout)
    assert data["central"]["to"] == "az://mgh/site/"
    assert data["site"]["roots"] == {"Images": "https://acct.blob.core.windows.net/c/images",
                                     "Waveforms": "s3://bucket/wave"}
    assert "sas_token_env" not in data.get("azure", {})  # a password is not a SAS token
    load_config(_converted(tmp_path, out))


def test_a_token_alone_before_a_urls_host_is_a_secret_never_copied(tmp_path):
    """https://TOKEN@host/... (a token as the user, as git and HTTP clients send it) and s3://KEYID@bucket/...: only
    user:password was taken out; a user alone was copied into chorus.toml and quoted in the warnings. abfs://
    CONTAINER@ACCOUNT/ names a container: kept."""
    out = cli("import-config", str(_config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "https://{PASSWORD}@acct.blob.core.windows.net/central"
[site_path.default]
path = "s3://{PASSWORD}@bucket/site"
[site_path.Images]
path = "abfs://images@acct.dfs.core.windows.net/site"
""")))
    assert out.returncode == 1, out.stderr
    assert PASSWORD not in out.stdout + out.stderr
    warnings = _warnings(out.stderr)
    for key, shown in (("central_path.path", "https://****@acct.blob.core.windows.net/central"),
                       ("site_path.default.path", "s3://****@bucket/site")):
        (warning,) = [w for w in warnings if f': {key} = "{shown}"' in w]
        assert f'{key} = "{shown}": a URL with a user name or token before its host' in warning
        assert "rotate it (replace the token)" in warning
    data = tomllib.loads(out.stdout)
    assert data["site"]["root"] == "s3://bucket/site"
    assert data["site"]["roots"] == {"Images": "abfs://images@acct.dfs.core.windows.net/site"}


def test_a_password_and_a_sas_in_one_url(tmp_path):
    converted = convert_config(_config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
[site_path.default]
path = "https://me:{PASSWORD}@acct.blob.core.windows.net/c/site?{URL_SIG}"
"""))
    (warning,) = [w for w in converted.warnings if "site_path.default.path = " in w]
    assert '"https://me:****@acct.blob.core.windows.net/c/site?****"' in warning
    assert "a password" in warning and "a SAS token" in warning and "copied without them" in warning
    assert "AZURE_STORAGE_SAS_TOKEN" in warning and "rotate it" in warning
    shown = converted.text + "".join(converted.warnings)
    assert PASSWORD not in shown and "sig=" not in shown
    assert 'sas_token_env = "AZURE_STORAGE_SAS_TOKEN"' in converted.text


def test_a_secret_of_any_type_is_a_secret(tmp_path):
    source = _config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
  [central_path.auth]
  azure_account_key = {{value = "{ACCOUNT_KEY}"}}
  azure_sas_token = ["{SAS}"]
  azure_connection_string = {{nested = {{deeper = ["{CONNECTION_STRING}"]}}}}
[site_path.default]
path = "/data/site"
  [site_path.default.auth]
  aws_secret_access_key = {{key = "{AWS_SECRET}"}}
  aws_session_token = 123456789012345
  password = ["{AWS_SESSION}", {{more = "{AWS_KEY_ID}"}}]
""")
    out = cli("import-config", str(source))
    assert out.returncode == 1, out.stderr
    for text in (out.stdout, out.stderr):
        for secret in (*SECRETS, "123456789012345"):
            assert secret not in text
        assert "FAKE" not in text
    warnings = _warnings(out.stderr)
    for key, shown in (("central_path.auth.azure_account_key", "**** (a table, not shown)"),
                       ("central_path.auth.azure_sas_token", "**** (an array of 1 value, not shown)"),
                       ("central_path.auth.azure_connection_string", "**** (a table, not shown)"),
                       ("site_path.default.auth.aws_secret_access_key", "**** (a table, not shown)"),
                       ("site_path.default.auth.aws_session_token", "**** (not shown)"),
                       ("site_path.default.auth.password", "**** (an array of 2 values, not shown)")):
        (warning,) = [w for w in warnings if f": {key} = " in w]
        assert f"{key} = {shown}: " in warning and "rotate it" in warning
    # a secret, not a malformed value (password is also a key chorus-upload does not read: named as such)
    assert not any("not converted" in w and "auth." in w and "not understood" not in w for w in warnings)
    assert not any("should be" in w for w in warnings)
    # each Azure secret found still names its variable, as a text one does
    config = load_config(_converted(tmp_path, out))
    assert config.azure.account_key_env == "AZURE_STORAGE_KEY"
    assert config.azure.sas_token_env == "AZURE_STORAGE_SAS_TOKEN"
    assert config.azure.connection_string_env == "AZURE_STORAGE_CONNECTION_STRING"


def test_an_empty_secret_of_any_type_is_named_empty(tmp_path):
    converted = convert_config(_config(tmp_path, """
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
  [central_path.auth]
  azure_account_key = {value = ""}
  azure_sas_token = []
[site_path.default]
path = "/data/site"
"""))
    assert "central_path.auth.azure_account_key (empty)" in converted.text
    assert "central_path.auth.azure_sas_token (empty)" in converted.text
    assert "account_key_env" not in converted.text and "sas_token_env" not in converted.text
    assert not any("****" in w for w in converted.warnings)


def test_the_converter_writes_nothing_itself(tmp_path, capfd):
    """convert_config and write_config return the text and the warnings; only the command line prints."""
    source = _config(tmp_path, WITH_SECRETS)
    converted = convert_config(source)
    write_config(converted.text, tmp_path / "chorus.toml", source=source)
    write_config(converted.text, tmp_path / "chorus.toml", force=True, source=source)
    assert converted.warnings
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("force", [False, True])
def test_out_is_written_by_the_projects_owner_only_writer(tmp_path, force):
    """A write killed earlier left its temporary file (it holds the config): the next write removes it, as every
    other output's writer does."""
    target = tmp_path / "chorus.toml"
    if force:
        target.write_text("# mine\n", encoding="utf-8")
    left = tmp_path / ".chorus.toml.4242.tmp"  # what a killed write of the same file left behind
    left.write_text("# half a conf", encoding="utf-8")
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    out = cli("import-config", str(FIXTURES / "config.toml"), "--out", str(target), *(["--force"] if force else []))
    assert out.returncode == 1, out.stderr
    assert target.read_text(encoding="utf-8").startswith("# chorus.toml converted from")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["chorus.toml"]


def test_out_dash_is_standard_output_as_in_report(tmp_path):
    """`--out -` (standard output in `report` and `review`) wrote an owner-only file named "-" in the folder."""
    out = cli("import-config", str(FIXTURES / "config.toml"), "--out", "-", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith("# chorus.toml converted from") and list(tmp_path.iterdir()) == []


def test_a_stopped_import_config_says_what_it_wrote_not_a_manifest(tmp_path):
    """SIGTERM while import-config reads its config (a FIFO: `import-config <(ssh host cat config.toml)`) said
    "nothing was committed; the manifest holds what it held before (`chorus-batch versions` lists it)": it has none."""
    import signal
    import subprocess
    import sys

    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "import-config", str(fifo), "--out",
                             str(tmp_path / "chorus.toml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:  # until it holds the FIFO open to read (after its signal handlers are set)
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    try:
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(writer)
    assert proc.returncode == 143, err
    assert "manifest" not in err and "versions" not in err and "no chorus.toml was written" in err, err
    assert not (tmp_path / "chorus.toml").exists()


def test_a_config_saved_as_windows_1252_is_named_as_such_and_a_binary_as_no_text(tmp_path):
    """A Windows site's config.toml with an accented path, saved in Windows-1252: it said "is not a text file (not
    UTF-8 at byte 35)" with the fix "pass the path of chorus-upload's config.toml", which it was."""
    source = tmp_path / "config.toml"
    source.write_bytes('[journal]\njournaling_mode = "full"\n[site_path.default]\npath = "D:/Données/site"\n'
                       .encode("cp1252"))
    out = cli("import-config", str(source))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{source} is not UTF-8: byte 0xe9 on line 4 (a Latin-1 or Windows-1252 letter" in out.stderr, out.stderr
    assert f"where: {source}, line 4" in out.stderr and "fix:   save the file as UTF-8" in out.stderr, out.stderr
    journal = cli("import-config", str(FIXTURES / "journal_A.db"))
    assert journal.returncode == 2 and "is not a text file" in journal.stderr, journal.stderr


def test_a_config_saved_as_utf16_by_windows_converts_as_its_utf8_copy(tmp_path):
    """chorus-upload's config.toml saved by Windows PowerShell 5 (`>`) or Notepad's "Unicode" is UTF-16 with a
    byte-order mark: import-config said "not a text file (not UTF-8 at byte 0)", as of a binary; chorus.toml itself was
    read (config_file.decode_toml). It converts as the UTF-8 file does; without the mark it is named as UTF-16."""
    text = (FIXTURES / "config.toml").read_text(encoding="utf-8")
    utf16 = tmp_path / "config.toml"
    utf16.write_bytes(text.encode("utf-16"))  # (with its byte-order mark)
    out, plain = cli("import-config", str(utf16)), cli("import-config", str(FIXTURES / "config.toml"))
    assert out.returncode == plain.returncode and "not a text file" not in out.stderr, out.stderr
    assert out.stdout == plain.stdout.replace(str(FIXTURES / "config.toml"), str(utf16))
    utf16.write_bytes(text.encode("utf-16-le"))
    bare = cli("import-config", str(utf16))
    assert bare.returncode == 2 and "UTF-16 text without a byte-order mark" in bare.stderr, bare.stderr


def test_a_config_without_a_default_site_path_is_warned_of_whatever_its_modality_roots(tmp_path):
    """Each modality listed with its own path and no site_path.default: converted without a word (exit 0), into a
    chorus.toml that `run` stops on ("no site given"); and --out said "(1 warnings)"."""
    source = _config(tmp_path, """
[configuration]
supported_modalities = "OMOP,Images,Waveforms"
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
[site_path.OMOP]
path = "/data/omop"
[site_path.Images]
path = "/data/images"
[site_path.Waveforms]
path = "/data/waves"
""")
    out = cli("import-config", str(source), "--out", str(tmp_path / "chorus.toml"))
    assert out.returncode == 1, out.stderr
    (warning,) = _warnings(out.stderr)
    assert "no site_path.default.path: [site] root not set" in warning and "`run` stops without it" in warning
    assert "and Metadata has no root until it is set" in warning  # (chorus-upload tracks Metadata always)
    assert out.stderr.endswith("(1 warning)\n"), out.stderr


@pytest.mark.parametrize("path,said", [("az://mgh/./site-a", "a '.' folder"), ("az://mgh/site-a/..", "a '..' folder"),
                                       ("az://mgh/site-a//2025", "an empty folder name ('//')"),
                                       ("az://mgh/site-a./", "ending in '.'")])
def test_a_central_path_upload_refuses_is_warned_of_not_converted(tmp_path, path, said):
    """A central_path.path whose prefix `upload` refuses ('.', '..', '//' inside, a name ending in '.') became
    [central] to as it was, exit 0 without a word: every `upload` with the converted chorus.toml then stopped, exit 2."""
    source = _config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "{path}"
[site_path.default]
path = "/data/site"
""")
    out = cli("import-config", str(source))
    assert out.returncode == 1, out.stderr
    (warning,) = _warnings(out.stderr)
    assert f'central_path.path = "{path}"' in warning and said in warning and "[central] to not set" in warning
    assert tomllib.loads(out.stdout)["central"] == {}  # (only commented out: `upload` asks for --to)
    load_config(_converted(tmp_path, out))



def test_a_central_url_on_an_unknown_host_says_what_to_write_if_it_is_the_account(tmp_path):
    """An https:// central_path.path on a custom domain chorus-upload did not sign in to (no azure_account_url) was
    "not an Azure container ... set [central] to": it now says the [central] to and [azure] account_url it would be."""
    source = _config(tmp_path, """
[journal]
journaling_mode = "full"
[central_path]
path = "https://storage.example-hospital.org/central/site1"
[site_path.default]
path = "/data/site"
""")
    out = cli("import-config", str(source))
    assert out.returncode == 1, out.stderr
    (warning,) = _warnings(out.stderr)
    assert "not an Azure container" not in warning and "custom domain" in warning
    assert '[central] to = "az://central/site1/"' in warning
    assert '[azure] account_url = "https://storage.example-hospital.org"' in warning
    assert tomllib.loads(out.stdout)["central"] == {}
    load_config(_converted(tmp_path, out))


@pytest.mark.parametrize("path,to,account", [
    ("https://acct.blob.core.windows.net/central/site1", "az://central/site1/", "https://acct.blob.core.windows.net"),
    ("https://acct.dfs.core.windows.net/central/", "az://central/", "https://acct.blob.core.windows.net"),
    ("https://upload.chorus4ai.org/mgh/site1", "az://mgh/site1/", "https://upload.chorus4ai.org"),
    # its private endpoint, as a site inside the hospital's network reaches it (was "not an Azure container")
    ("https://acct.privatelink.blob.core.windows.net/central/site1", "az://central/site1/",
     "https://acct.privatelink.blob.core.windows.net"),
])
@pytest.mark.parametrize("sas", [False, True], ids=["plain", "sas"])
def test_a_central_path_given_as_a_container_url_becomes_central_to_and_the_account(tmp_path, path, to, account, sas):
    """central_path.path as the full https:// URL of the container (as the Azure portal shows it, a SAS token after it
    or not) was said to be "not an Azure container", [central] to and [azure] account_url left unset. A custom domain
    is taken as the account's when chorus-upload signed in to it (azure_account_url)."""
    custom = "chorus4ai" in path
    source = _config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "{path}{'?' + URL_SIG if sas else ''}"
{'[central_path.auth]' + chr(10) + 'azure_account_url = "https://upload.chorus4ai.org"' if custom else ''}
[site_path.default]
path = "/data/site"
""")
    out = cli("import-config", str(source))
    assert out.returncode == (1 if sas else 0), out.stderr
    data = tomllib.loads(out.stdout)
    assert data["central"]["to"] == to
    assert data["azure"]["account_url"] == account
    assert "not an Azure container" not in out.stderr
    assert "sig=" not in out.stdout + out.stderr
    if sas:
        (warning,) = _warnings(out.stderr)
        assert "central_path.path = " in warning and "?****" in warning and "a SAS token" in warning
        assert data["azure"]["sas_token_env"] == "AZURE_STORAGE_SAS_TOKEN"
    else:
        assert _warnings(out.stderr) == []
    load_config(_converted(tmp_path, out))


def test_a_central_path_url_of_another_host_is_still_not_a_container(tmp_path):
    out = cli("import-config", str(_config(tmp_path, """
[journal]
journaling_mode = "full"
[central_path]
path = "https://example.org/central/site1"
[site_path.default]
path = "/data/site"
""")))
    assert out.returncode == 1, out.stderr
    (warning,) = _warnings(out.stderr)
    assert "is not on a host known as Azure Storage's: [central] to not set" in warning
    assert "to" not in tomllib.loads(out.stdout)["central"]


@pytest.mark.parametrize("path,said", [("az://bedside/./export", "a '.' folder"),
                                       ("s3://chorus-images/site//images", "an empty folder name ('//')"),
                                       ("az://Bedside/export", "give az://bedside/export"),
                                       ("https://acc.blob.core.windows.net/bedside/export", "give az://bedside/export")])
def test_a_site_path_run_refuses_is_warned_of(tmp_path, path, said):
    """A site_path URL `run` refuses as a root was converted without a word, exit 0: the first command on the
    converted chorus.toml stopped, exit 2. It is kept (a root left out would be read from [site] root instead), and
    said, with run's own reason and fix."""
    source = _config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
[site_path.default]
path = "{tmp_path}"
[site_path.Waveforms]
path = "{path}"
""")
    out = cli("import-config", str(source))
    assert out.returncode == 1, out.stderr
    (warning,) = _warnings(out.stderr)
    assert f"site_path.Waveforms.path {path}" in warning and said in warning and "`run` refuses it" in warning
    assert tomllib.loads(out.stdout)["site"] == {"root": str(tmp_path), "roots": {"Waveforms": path}}
    status = cli("status", "--config", str(_converted(tmp_path, out)), "--db", str(tmp_path / "m.sqlite"))
    assert status.returncode == 2 and said in status.stderr, status.stderr


def test_a_secret_written_as_a_key_is_never_shown_nor_copied(tmp_path, capfd):
    """A SAS token pasted as a key's name ("sv=...&sig=..." = "") was named whole in the "not understood" warning and
    in the converted file's comments; a standard key that holds the word (aws_secret_access_key) is still a key."""
    source = _config(tmp_path, f"""
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
  [central_path.auth]
  auth_mode = "sas_token"
  "{SAS}" = ""
[site_path.default]
path = "/data/site"
  [site_path.default.auth]
  aws_secret_access_key = "{AWS_SECRET}"
""")
    out = cli("import-config", str(source), "--out", str(tmp_path / "chorus.toml"))
    assert out.returncode == 1, out.stderr
    written = (tmp_path / "chorus.toml").read_text(encoding="utf-8")
    for text in (out.stdout, out.stderr, written):
        assert "SECRETsasSIGNATURE" not in text and AWS_SECRET not in text
    (said,) = [w for w in _warnings(out.stderr) if "central_path.auth.<a key of" in w]
    assert f"<a key of {len(SAS)} characters, not shown> looks like a secret" in said and "rotate it" in said
    assert any("site_path.default.auth.aws_secret_access_key = ****" in w for w in _warnings(out.stderr))
    load_config(tmp_path / "chorus.toml")


# An Azure secret under a key chorus-upload does not read it from (another letter case, a section it does not read)
# or that chorus-batch does not sign in with (the journal's, beside the central container's) was warned of as "not
# copied (chorus.toml names the environment variable instead: [azure] account_key_env = ...)": chorus.toml named none.
@pytest.mark.parametrize("where,key,setting", [
    ("central_path.auth", "Azure_Account_Key", "account_key_env"),
    ("old_stuff", "azure_account_key", "account_key_env"),
    ("journal.source.auth", "azure_sas_token", "sas_token_env"),
])
def test_a_secret_warning_says_a_variable_is_named_only_when_chorus_toml_names_it(tmp_path, where, key, setting):
    text = """
[journal]
journaling_mode = "full"
[journal.source]
path = "az://journals/journal.db"
[central_path]
path = "az://mgh/"
[central_path.auth]
azure_connection_string = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=FAKEcentralKEY=="
[site_path.default]
path = "/data/site"
"""
    line = f'{key} = "FAKEsecretVALUE=="'
    header = f"[{where}]\n"
    text = text.replace(header, header + line + "\n") if header in text else text + header + line + "\n"
    source = _config(tmp_path, text)
    out = cli("import-config", str(source))
    assert out.returncode == 1, out.stderr
    assert setting not in tomllib.loads(out.stdout)["azure"]  # chorus.toml names no variable for it ...
    (line,) = [w for w in _warnings(out.stderr) if f"{where}.{key} = ****" in w]
    assert "chorus.toml names the environment variable instead" not in line  # ... and the warning says so
    assert "names no variable for it" in line and "rotate it" in line and f"[azure] {setting} = " in line
    assert "FAKE" not in out.stdout + out.stderr
    # the central container's secret, which chorus.toml does name, is still said to be named
    (central,) = [w for w in _warnings(out.stderr) if "central_path.auth.azure_connection_string = ****" in w]
    assert 'chorus.toml names the environment variable instead: [azure] connection_string_env' in central


def test_the_connection_string_key_chorus_uploads_sign_in_reads_is_its_connection_string(tmp_path):
    """chorus-upload's template names it azure_connection_string, the code that signs in reads
    azure_storage_connection_string: a config with the latter is that connection string (not copied, its variable
    named), not a key 'chorus-upload does not read' with a guess at another name."""
    source = _config(tmp_path, """
[journal]
journaling_mode = "full"
[central_path]
path = "az://mgh/"
[central_path.auth]
azure_storage_connection_string = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=FAKEcentralKEY=="
[site_path.default]
path = "/data/site"
""")
    out = cli("import-config", str(source))
    assert out.returncode == 1, out.stderr
    assert tomllib.loads(out.stdout)["azure"]["connection_string_env"] == "AZURE_STORAGE_CONNECTION_STRING"
    assert "not understood" not in out.stderr and "did you mean" not in out.stderr
    (line,) = [w for w in _warnings(out.stderr) if "central_path.auth.azure_storage_connection_string = ****" in w]
    assert "rotate it" in line and "connection_string_env" in line
    assert "FAKE" not in out.stdout + out.stderr
