"""The file behind a sqlite:/// store URL: refuse one that cannot hold the store before anything is written.

Optuna and MLflow each create their tables in whatever SQLite file they are given. Pointed at the
other's database (``--storage sqlite:///mlflow.db``), either adds its tables to it and then fails on
the schema it finds; pointed at a text file, SQLAlchemy fails with a traceback. These checks read
the file only (its header and, read-only, its table names).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import sqlalchemy

DEFAULT_STORAGE = "sqlite:///optuna.db"  # Optuna's studies, embedded
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's runs, embedded (MLFLOW_TRACKING_URI takes over)
SQLITE_HEADER = b"SQLite format 3\x00"
# a table each tool always creates, and what to call a database that has it
OWN_TABLES = {"optuna": ("studies", "an Optuna study storage"), "mlflow": ("experiments", "an MLflow tracking store")}


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URL (relative to the working folder, as SQLAlchemy reads
    it), or None when the URL is not SQLite or names no file."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def table_names(path: Path) -> set[str]:
    """The tables of the SQLite file at path, read without writing to it, unless a process killed mid-write left a
    hot journal: then SQLite must roll it back before anything can read the file (what the tool's own first open
    would do), and a read-only open refuses with SQLITE_READONLY_ROLLBACK."""
    query = "SELECT name FROM sqlite_master WHERE type = 'table'"
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            return {row[0] for row in db.execute(query)}
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_READONLY_ROLLBACK:
            raise
    with closing(sqlite3.connect(path)) as db:  # recovers the hot journal, then reads
        return {row[0] for row in db.execute(query)}


def sqlite_problem(url: str, tool: str) -> str | None:
    """Why the file of SQLite ``url`` cannot be ``tool``'s store ('optuna' or 'mlflow'); None when it can,
    or when the URL is not SQLite. A missing or empty file is fine: the tool creates it."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return f"{url} names no database file: use sqlite:///FILE (an in-memory store would lose every run)"
    path = Path(database)
    if path.is_dir():
        return f"{path} is a folder, not a database file"
    if not path.parent.is_dir():
        return f"{path}: {path.parent} is not an existing folder"
    if not path.exists():
        return None
    if not path.is_file():
        return f"{path} is not a regular file"
    if path.stat().st_size == 0:
        return None
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            return f"{path} is not a SQLite database"
        tables = table_names(path)
    except (OSError, sqlite3.Error) as exc:
        return f"{path} cannot be read as a SQLite database ({exc})"
    own_table, own_name = OWN_TABLES[tool]
    if tables and own_table not in tables:
        other = next((name for key, (table, name) in OWN_TABLES.items() if key != tool and table in tables),
                     "another program's database")
        return f"{path} is {other}, not {own_name}; nothing was written to it"
    return None
