"""chorus_batch: track and version a CHoRUS site's data tree.

    from chorus_batch import RunSettings, run
    result = run(RunSettings(site="/data/site", db="manifest.sqlite"))
    result.change_set  # polars frame: change, srcfile, old_srcfile, ...
"""

from .config import RunSettings, load_config
from .errors import ChorusError, ExitCode
from .pipeline import RunResult, run
from .store import Manifest

__all__ = ["ChorusError", "ExitCode", "Manifest", "RunResult", "RunSettings", "load_config", "run"]
__version__ = "0.1.0"
