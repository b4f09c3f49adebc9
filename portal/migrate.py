"""Alembic, driven from code: the same migrations run on SQLite and PostgreSQL.

Two schemas, two script folders: the main database (``migrations/``) and the key store
(``migrations_keystore/``), which lives in a database of its own.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData

HERE = Path(__file__).resolve().parent


class Schema(enum.Enum):
    main = "migrations"
    keystore = "migrations_keystore"


def alembic_config(database_url: str, schema: Schema = Schema.main) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE / schema.value))
    # "%" would be read as interpolation by configparser (URL-encoded passwords).
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head", schema: Schema = Schema.main) -> None:
    command.upgrade(alembic_config(database_url, schema), revision)


def downgrade(database_url: str, revision: str, schema: Schema = Schema.main) -> None:
    command.downgrade(alembic_config(database_url, schema), revision)


def upgrade_all(database_url: str, keystore_url: str) -> None:
    upgrade(database_url)
    upgrade(keystore_url, schema=Schema.keystore)


def head_revision(schema: Schema = Schema.main) -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://", schema)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_current(engine: Engine, schema: Schema = Schema.main) -> bool:
    return current_revision(engine) == head_revision(schema)


def run_env(metadata: MetaData) -> None:
    """The body of both Alembic env.py files: migrate the configured database to ``metadata``."""
    from alembic import context

    from portal.db import create_db_engine

    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("no database URL given to Alembic")
    engine = create_db_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            render_item=_render_item,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations must not import application types: UTCDateTime is a plain timestamptz column.
    from portal.db import UTCDateTime

    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False
