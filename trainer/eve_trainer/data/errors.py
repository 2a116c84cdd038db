"""Errors of the data pipeline that are a user's to fix (bad data, wrong URL).

They carry a message naming the shard, key or URL; the CLI and the trainer print the
message without a stack trace.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data or data URL; the message names the shard/key/URL and what to do."""
