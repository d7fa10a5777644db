"""Where a site's files come from: one Source seam (base.py), a fast path for local disks
(local.py) and fsspec for everything else (remote.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import FileChangedWhileHashing, FileStat, HashOutcome, Source, listing_batch
from .local import LocalSource, walk_local
from ..urls import check_location, local_path, mask_url, root_url

if TYPE_CHECKING:
    from ..config import CloudSettings
    from .remote import FsspecSource

__all__ = ["FileChangedWhileHashing", "FileStat", "FsspecSource", "HashOutcome", "LocalSource", "Source",
           "listing_batch", "mask_url", "open_source", "walk_local"]


def __getattr__(name: str) -> Any:
    # fsspec and the cloud clients load when a URL is opened: a local run never imports them.
    if name == "FsspecSource":
        from .remote import FsspecSource

        return FsspecSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_source(location: str, *, follow_symlinks: bool = False, workers: int = 1,
                cloud: CloudSettings | None = None, what: str = "--site / [site] root",
                refuse_links: bool = False) -> Source:
    """A local path (or file:// URL) gets the fast path; other URLs go through fsspec, az:// and s3://
    signed in as `cloud` ([azure], [s3] of chorus.toml) and the environment say (sources/cloud.py).
    A URL that cannot be a root is refused first (urls.check_location), `what` naming where it was given.
    `refuse_links`: a run's own root, listed without following links, hashes no file through one (LocalSource)."""
    check_location(location, what)
    path = local_path(location, what)
    if path is None:
        from .remote import FsspecSource

        # A scheme is case-insensitive (RFC 3986), and check_location took S3:// or AZ:// as such; fsspec did not:
        # 'cannot reach S3://b/site: ParamValidationError' (its bucket read as 'S3:'). As urls.root_url spells it
        # (lowercased, s3a:// as s3://, no trailing '/'), it is also the root recorded on the runs that spell it so.
        return FsspecSource(root_url(location), cloud=cloud, what=what)
    return LocalSource(path, follow_symlinks=follow_symlinks, workers=workers, what=what, refuse_links=refuse_links)
