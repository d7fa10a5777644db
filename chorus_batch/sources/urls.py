"""What a location string says, without signing in anywhere: its protocol, whether it is an Azure URL,
and the form it may be shown or stored in (secrets masked).

Standard library only: every run asks these questions, and a local run then imports none of the cloud
clients (sources/cloud.py pulls in asyncio and the Azure SDK's helpers: 10-30 ms of each start-up,
`python -X importtime`).
"""

from __future__ import annotations

import os
import re

AZURE_PROTOCOLS = ("az", "abfs", "abfss")
S3_PROTOCOLS = ("s3", "s3a")

# Query parameters and userinfo that carry secrets: never recorded, logged or printed.
_SECRET_QUERY = re.compile(r"(?i)([?&](?:sig|sv|se|sp|spr|srt|ss|st|skoid|sktid|skt|ske|sks|skv)=)[^&]*")
_USERINFO = re.compile(r"^([a-z0-9+.-]+://)[^/@]*@", re.IGNORECASE)


def mask_url(url: str) -> str:
    """A URL as it may be shown or stored: SAS parameters and user:password masked."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", url))


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_remote(db: str | os.PathLike[str] | None) -> bool:
    """A manifest kept in Azure Blob Storage (store/remote.py), not in a local file."""
    return isinstance(db, str) and protocol_of(db) in AZURE_PROTOCOLS
