"""benchmarks/run_benchmarks.py's clean-up: it says what it deletes and how long it took (it can take minutes)."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "run_benchmarks.py"


def _load():
    spec = importlib.util.spec_from_file_location("run_benchmarks_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_remove_workdir_deletes_the_tree_and_says_so(tmp_path, capsys):
    rb = _load()
    workdir = tmp_path / "chorus-bench-x"
    tree = rb.SCALES["smoke"][0]
    written, _ = rb.build_tree(workdir / tree.name, tree)
    assert written == tree.n_files
    (workdir / "small100k.sqlite").write_bytes(b"x" * 4096)

    seconds = rb.remove_workdir(workdir)

    assert not workdir.exists()
    assert seconds >= 0
    err = capsys.readouterr().err
    assert f"removing {workdir} (--keep skips this) ..." in err
    assert f"removed {workdir} in {seconds:.1f} s\n" in err
