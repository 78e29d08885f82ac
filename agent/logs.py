"""Structured logs: one line a record, key=value (or JSON), carrying the job's name.

Pass the job with `extra={"job": name}`; the compile child sets it for every record it writes.
"""
from __future__ import annotations

import json
import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    def __init__(self, job: str = ""):
        super().__init__()
        self.job = job

    def fields(self, record: logging.LogRecord) -> dict:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        job = getattr(record, "job", "") or self.job
        if job:
            data["job"] = job
        data["msg"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return data

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in self.fields(record).items():
            text = str(value)
            if key in ("msg", "exc") or " " in text or '"' in text:
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


class JsonFormatter(KeyValueFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record))


def setup(level: str = "INFO", fmt: str = "kv", job: str = "", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(job) if fmt == "json" else KeyValueFormatter(job))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
