"""Storage: URIs (s3, https, file), downloads and uploads, safe archive handling.

Importing this package stays cheap (boto3 is imported on first use), so the benchmark
worker can use the archive helpers without carrying boto3 in its memory.
"""
from agent.storage.archive import digest, pack, safe_extract
from agent.storage.retry import Patience
from agent.storage.s3 import Stored
from agent.storage.transfer import Fetched, download, upload
from agent.storage.uri import Location, join, parse

__all__ = ["Fetched", "Location", "Patience", "Stored", "digest", "download", "join", "pack", "parse",
           "safe_extract", "upload"]
