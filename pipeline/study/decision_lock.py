"""One decider per study: a second `sweep --seeds/--decide` on a study whose verdict is being decided refuses at
once, naming the one running (host, pid, since when), instead of training the same packs again and writing its
own copy of the kept seeds over the first's.

The lock lives where the study does and dies with its holder, so a killed decider never leaves it held: SQLite
gets a file lock beside the database (flock, released by the kernel when the process ends); PostgreSQL a
session-level advisory lock on (constant, the study's name), released when the connection closes. Who holds it
is written on the study (user attribute ``decider``) for the message.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import zlib
from typing import Iterator

import optuna

from pipeline.sqlite_files import sqlite_path
from pipeline.study.optuna_study import SweepError

ADVISORY_KEY = 0x7155E  # the first key of every decision lock; the second is the study's
ATTR = "decider"


class DecisionHeld(SweepError):
    """Another process is deciding this study's verdict."""


@contextlib.contextmanager
def decision_lock(storage_url: str, study: optuna.Study) -> Iterator[None]:
    """Hold the study's decision lock for the block, or raise DecisionHeld naming its holder."""
    if storage_url.startswith("sqlite:///"):
        lock = _file_lock(storage_url, study.study_name)
    elif storage_url.startswith("postgresql"):
        lock = _advisory_lock(storage_url, study.study_name)
    else:  # another backend: no lock we know how to take
        lock = contextlib.nullcontext(True)
    with lock as held:
        if not held:
            raise DecisionHeld(_held_message(study))
        study.set_user_attr(ATTR, {"host": socket.gethostname(), "pid": os.getpid(),
                                   "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
        yield


def _held_message(study: optuna.Study) -> str:
    holder = study.user_attrs.get(ATTR) or {}
    who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}" if holder
           else "another process")
    return (f"study {study.study_name}: its verdict is being decided by {who}; wait for it to finish (its packs are "
            "kept as they are trained, so running this again afterwards reuses them), or stop it first")


@contextlib.contextmanager
def _file_lock(storage_url: str, study_name: str) -> Iterator[bool]:
    db = sqlite_path(storage_url).resolve()
    path = db.with_name(f"{db.name}.decide-{zlib.crc32(study_name.encode()):08x}.lock")
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(storage_url: str, study_name: str) -> Iterator[bool]:
    import sqlalchemy
    import sqlalchemy.exc
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(storage_url, poolclass=NullPool)
    key = {"a": ADVISORY_KEY, "b": zlib.crc32(study_name.encode()) - 2 ** 31}  # int4, as Postgres wants
    try:
        # autocommit: the session must not sit idle in a transaction for hours (a server may end such sessions)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            held = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:a, :b)"), key).scalar()
            try:
                yield bool(held)
            finally:
                if held:  # a session the server has ended has released its lock already
                    with contextlib.suppress(sqlalchemy.exc.DBAPIError):
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:a, :b)"), key)
    finally:
        engine.dispose()
