"""`chorus-batch import-config`: a chorus-upload config.toml becomes a chorus.toml that chorus-batch reads,
secrets are never copied or shown, and what cannot be translated is a warning."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import polars as pl
import pytest

from chorus_batch.classify import CURRENT, DEFAULT_PATTERNS, build_patterns, classify
from chorus_batch.config import load_config
from chorus_batch.upstream.config import _TAILS, UPSTREAM_PATTERNS, convert_config
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
path = "C:\\\\bedside\\\\export"
pattern = "{patient_id:w}/Waveforms/{filepath}"
""")
    out = cli("import-config", str(source))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    data = tomllib.loads(out.stdout)
    assert data["site"] == {"root": "/data/site", "roots": {"Waveforms": "C:\\bedside\\export"}}
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


def test_help_has_an_example_and_the_exit_codes():
    out = cli("import-config", "--help")
    assert out.returncode == 0
    assert "chorus-batch import-config" in out.stdout and "> chorus.toml" in out.stdout
    assert "converted, with warnings (secrets not copied, settings not translated)" in out.stdout
    assert "exit codes:" in out.stdout
