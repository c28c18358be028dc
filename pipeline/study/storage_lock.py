"""One lock per Optuna storage, shared by every process that uses it.

Creating the study and the databases, and claiming a trial slot, must happen one
process at a time: SQLite schemas created concurrently crash, and two workers that
both see "one trial left" would both start one. SQLite gets a file lock beside the
database (its users share a machine); PostgreSQL gets an advisory lock (its users
may not).
"""

from __future__ import annotations

import contextlib
import fcntl
from typing import Iterator

from pipeline.sqlite_files import sqlite_path

ADVISORY_KEY = 0x7155D  # any constant: every tinyssd-ablate process agrees on it


class StorageLock:
    def __init__(self, url: str):
        self.url = url
        self._engine = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.url.startswith("sqlite:///"):
            with self._file_lock():
                yield
        elif self.url.startswith("postgresql"):
            with self._advisory_lock():
                yield
        else:  # another backend: no lock we know how to take
            yield

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        db = sqlite_path(self.url).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{db}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _advisory_lock(self) -> Iterator[None]:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=NullPool)
        with self._engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
