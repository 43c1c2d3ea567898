#!/usr/bin/env python3
"""Makes the corpus of databases that migrations/tests/corpus.rs runs the engine on.

Every database is made by a real tool: SQLAlchemy 1.3, 1.4 and 2.0 (`create_all`), Alembic
(`revision --autogenerate` + `upgrade`, `stamp head`), the sqlite3 shell (`.dump` round trips
included). Each comes with its expected verdict, written here by hand next to the code that
makes it, and saved to expected.json:

    file, tool, state, matches (a revision or null), difference (a substring of one line of
    the engine's difference, or null), reason (one line: why this is the right verdict).

Run through make.sh, which makes the Python virtual environments first. This file runs in two
roles: `make.py build ...` (system Python: orchestrates, calls the shell and the venvs) and
`make.py sqlalchemy ...` / alembic's env.py (inside a venv: imports SQLAlchemy).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SQL = os.path.join(HERE, "..", "..", "sql")
HANDWRITTEN = os.path.join(HERE, "..", "handwritten")

# The SQLAlchemy versions: the venv folder names make.sh creates.
SA13, SA14, SA20 = "sa1.3.24", "sa1.4.54", "sa2.0.36"

# ---------------------------------------------------------------------------------------------
# The old app's models (SQLAlchemy Core: the same DDL as its declarative models), by revision
# and variant. Imported only inside a venv.


def models(revision=1, **variant):
    """The MetaData of the bot's tables at `revision` (1-4), changed as `variant` says."""
    import sqlalchemy as sa

    m = sa.MetaData()
    id_type = sa.BigInteger if variant.get("bigint_id") else sa.Integer
    string = (lambda n: sa.String(255)) if variant.get("string_255") else sa.String
    if revision >= 4:
        is_admin_type = sa.Integer()
    elif variant.get("boolean_check"):
        is_admin_type = sa.Boolean(create_constraint=True)
    else:
        is_admin_type = sa.Boolean()
    admin_default = variant.get("admin_default", sa.text("0"))
    created_default = variant.get("created_default", sa.text("CURRENT_TIMESTAMP"))
    unique_index = variant.get("unique_index", False)
    columns = [
        sa.Column("id", id_type, primary_key=True),
        sa.Column(
            "telegram_id",
            sa.BigInteger,
            nullable=False,
            unique=True,
            index=True if unique_index else None,
        ),
        sa.Column("username", string(64)),
        sa.Column("first_name", string(128)),
    ]
    if not variant.get("missing_last_name"):
        columns.append(sa.Column("last_name", string(128)))
    columns += [
        sa.Column("is_admin", is_admin_type, nullable=False, server_default=admin_default),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=created_default),
    ]
    if variant.get("extra_column"):
        columns.append(sa.Column("nickname", sa.String(64)))
    if revision >= 2:
        columns += [
            sa.Column("language_code", sa.String(16)),
            sa.Column("last_seen_at", sa.DateTime, index=revision >= 4),
        ]
    extra = []
    if revision >= 4:
        extra.append(sa.CheckConstraint("is_admin IN (0, 1)"))
    kwargs = {"sqlite_autoincrement": True} if variant.get("autoincrement") else {}
    sa.Table("users", m, *columns, *extra, **kwargs)
    if revision >= 3:
        sa.Table(
            "command_log",
            m,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column(
                "user_id",
                sa.Integer,
                sa.ForeignKey("users.id", ondelete="CASCADE"),
                nullable=False,
                index=True,
            ),
            sa.Column("command", sa.String(32), nullable=False),
            sa.Column(
                "used_at",
                sa.DateTime,
                nullable=False,
                server_default=sa.text("CURRENT_TIMESTAMP"),
                index=True,
            ),
        )
    if variant.get("extra_table"):
        sa.Table(
            "settings",
            m,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text),
        )
    return m


def add_rows(engine, metadata):
    """A few rows, as the old app would have stored them."""
    import sqlalchemy as sa

    users = metadata.tables["users"]
    with engine.begin() as conn:
        for i in range(1, 4):
            values = {"telegram_id": 1000 + i, "username": "user%d" % i, "first_name": "First %d" % i}
            if users.c.id.type.__class__.__name__ == "BigInteger":
                values["id"] = i
            conn.execute(users.insert().values(**values))
        if "command_log" in metadata.tables:
            conn.execute(metadata.tables["command_log"].insert().values(user_id=1, command="/start"))
        if "settings" in metadata.tables:
            conn.execute(metadata.tables["settings"].insert().values(key="greeting", value="hi"))


def sqlalchemy_main(args):
    """Inside a venv: create_all of the models into a new file, then a few rows."""
    import sqlalchemy as sa

    variant = json.loads(args.variant)
    if "admin_default" in variant:
        variant["admin_default"] = sa.text(variant["admin_default"]) if variant["admin_default"] != "'0'" else "0"
    if variant.pop("created_now", False):
        variant["created_default"] = sa.func.now()
    metadata = models(args.revision, **variant)
    engine = sa.create_engine("sqlite:///" + args.out)
    metadata.create_all(engine)
    add_rows(engine, metadata)
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# The orchestration: system Python, stdlib only.

ENTRIES = []


def expect(file, tool, state, matches, difference, reason):
    ENTRIES.append(
        {
            "file": file,
            "tool": tool,
            "state": state,
            "matches": matches,
            "difference": difference,
            "reason": reason,
        }
    )


class Build:
    def __init__(self, out, venvs):
        self.out = out
        self.venvs = venvs

    def path(self, name):
        path = os.path.join(self.out, name)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        return path

    def python(self, venv):
        return os.path.join(self.venvs, venv, "bin", "python")

    def sqlalchemy(self, venv, name, revision=1, **variant):
        path = self.path(name)
        subprocess.run(
            [self.python(venv), __file__, "sqlalchemy", "--out", path, "--revision", str(revision),
             "--variant", json.dumps(variant)],
            check=True,
        )
        return path

    def shell(self, name, sql, source=None):
        """The sqlite3 shell runs `sql` on a new file (or on a .dump of `source`)."""
        path = self.path(name)
        if source is not None:
            dump = subprocess.run(["sqlite3", source, ".dump"], check=True, capture_output=True, text=True).stdout
            sql = dump + "\n" + sql
        subprocess.run(["sqlite3", "-bail", path], input=sql, check=True, text=True)
        return path

    def alembic(self, venv, name, steps, prepare=None):
        """An Alembic project in a temporary folder: `steps` are (revision, variant) pairs, each
        autogenerated against the database as the previous ones left it, then upgraded; with
        `prepare`, the database is that file first (then `steps` are only autogenerated and
        `alembic stamp head` runs instead of upgrade)."""
        path = self.path(name)
        alembic = os.path.join(self.venvs, venv, "bin", "alembic")
        with tempfile.TemporaryDirectory() as project:
            subprocess.run([alembic, "init", "-t", "generic", os.path.join(project, "alembic")], cwd=project,
                           check=True, capture_output=True)
            ini = os.path.join(project, "alembic.ini")
            with open(ini) as f:
                text = f.read().replace("driver://user:pass@localhost/dbname", "sqlite:///" + path)
            with open(ini, "w") as f:
                f.write(text)
            scratch = path if prepare is None else os.path.join(project, "scratch.db")
            for revision, variant in steps:
                write_env(os.path.join(project, "alembic", "env.py"), revision, variant, scratch)
                subprocess.run([alembic, "revision", "--autogenerate", "-m", "revision %d" % revision],
                               cwd=project, check=True, capture_output=True)
                subprocess.run([alembic, "upgrade", "head"], cwd=project, check=True, capture_output=True)
            if prepare is not None:
                shutil.copy(prepare, path)
                write_env(os.path.join(project, "alembic", "env.py"), steps[-1][0], steps[-1][1], path)
                subprocess.run([alembic, "stamp", "head"], cwd=project, check=True, capture_output=True)
        return path


ENV_PY = '''
import json, sys
sys.path.insert(0, {here!r})
from alembic import context
from sqlalchemy import create_engine, pool
import make
target_metadata = make.models({revision}, **json.loads({variant!r}))
engine = create_engine("sqlite:///" + {database!r}, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
'''


def write_env(path, revision, variant, database):
    with open(path, "w") as f:
        f.write(ENV_PY.format(here=HERE, revision=revision, variant=json.dumps(variant), database=database))


def read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


def up_to(k):
    names = sorted(n for n in os.listdir(SQL) if n.endswith(".up.sql"))
    return "\n".join(read(SQL, n) for n in names[:k])


ROWS = "INSERT INTO users (telegram_id, username, first_name) VALUES (1001, 'user1', 'First 1'), (1002, 'user2', 'First 2'), (1003, 'user3', 'First 3');"
# Rows for variants whose id may not be the rowid, or whose username may be generated.
ROWS_WITH_IDS = "INSERT INTO users (id, telegram_id, first_name) VALUES (1, 1001, 'First 1'), (2, 1002, 'First 2');"
R1 = read(SQL, "0001_initial.up.sql")


def r1_with(old, new):
    assert old in R1, old
    return R1.replace(old, new, 1) + "\n" + ROWS_WITH_IDS


def build(out, venvs):
    b = Build(out, venvs)

    # --- SQLAlchemy create_all: the old app's models, three versions ---------------------------
    for venv in (SA14, SA20):
        tag = venv[2:5].replace(".", "")
        b.sqlalchemy(venv, "sa%s_create_all_r1.db" % tag)
        expect("sa%s_create_all_r1.db" % tag, "SQLAlchemy %s create_all" % venv[2:], "unstamped", 1, None,
               "the old app's own create-all: revision 1 is exactly this schema")
        b.sqlalchemy(venv, "sa%s_create_all_r4.db" % tag, revision=4)
        expect("sa%s_create_all_r4.db" % tag, "SQLAlchemy %s create_all" % venv[2:], "unstamped", 4, None,
               "revision 4's models: the CHECK as a table constraint, the indexes named as SQLAlchemy names them")
    b.sqlalchemy(SA13, "sa13_create_all_r1.db")
    expect("sa13_create_all_r1.db", "SQLAlchemy 1.3.24 create_all", "unstamped", None,
           "table users: unexpected CHECK (is_admin IN (0, 1)) (revision 4 adds it)",
           "SQLAlchemy 1.3's Boolean adds CHECK (is_admin IN (0, 1)), which revision 1 lacks: an insert of 2 fails here")
    b.sqlalchemy(SA13, "sa13_create_all_r4.db", revision=4)
    expect("sa13_create_all_r4.db", "SQLAlchemy 1.3.24 create_all", "unstamped", 4, None,
           "revision 4 has the same CHECK that SQLAlchemy 1.3 writes, so 1.3 matches there")
    b.sqlalchemy(SA13, "sa13_create_all_r3.db", revision=3)
    expect("sa13_create_all_r3.db", "SQLAlchemy 1.3.24 create_all", "unstamped", None,
           "unexpected CHECK (is_admin IN (0, 1)) (revision 4 adds it)",
           "revision 3 with SQLAlchemy 1.3's Boolean CHECK: not revision 3, and not 4 (is_admin is BOOLEAN, no index)")

    # --- SQLAlchemy 2.0 variants of the old app's models ---------------------------------------
    b.sqlalchemy(SA20, "sa20_bigint_id.db", bigint_id=True)
    expect("sa20_bigint_id.db", "SQLAlchemy 2.0.36 create_all", "unstamped", None,
           "column id: a rowid alias (INTEGER PRIMARY KEY) expected, found BIGINT PRIMARY KEY (not an alias: an insert without an id fails)",
           "a BigInteger id is not the rowid: the bot's inserts name no id and would fail")
    b.sqlalchemy(SA20, "sa20_unique_index.db", unique_index=True)
    expect("sa20_unique_index.db", "SQLAlchemy 2.0.36 create_all", "unstamped", 1, None,
           "unique=True, index=True makes a UNIQUE index instead of a constraint: same rule for every insert, and revision 4's rebuild makes it the constraint")
    b.sqlalchemy(SA20, "sa20_default_false.db", admin_default="FALSE")
    expect("sa20_default_false.db", "SQLAlchemy 2.0.36 create_all", "unstamped", 1, None,
           "DEFAULT FALSE stores 0, as DEFAULT 0 does")
    b.sqlalchemy(SA20, "sa20_default_quoted_zero.db", admin_default="'0'")
    expect("sa20_default_quoted_zero.db", "SQLAlchemy 2.0.36 create_all", "unstamped", 1, None,
           "server_default='0' writes DEFAULT '0'; a NUMERIC column stores it as the integer 0")
    b.sqlalchemy(SA20, "sa20_default_zero_real.db", admin_default="0.0")
    expect("sa20_default_zero_real.db", "SQLAlchemy 2.0.36 create_all", "unstamped", 1, None,
           "DEFAULT 0.0 in a NUMERIC column stores the integer 0")
    b.sqlalchemy(SA14, "sa14_default_func_now.db", created_now=True)
    expect("sa14_default_func_now.db", "SQLAlchemy 1.4.54 create_all", "unstamped", 1, None,
           "server_default=func.now() writes DEFAULT (CURRENT_TIMESTAMP): the brackets change nothing")
    b.sqlalchemy(SA20, "sa20_string_255.db", string_255=True)
    expect("sa20_string_255.db", "SQLAlchemy 2.0.36 create_all", "unstamped", 1, None,
           "VARCHAR(255) instead of VARCHAR(64): SQLite enforces no length, the affinity is TEXT in both")
    b.sqlalchemy(SA20, "sa20_extra_table.db", extra_table=True)
    expect("sa20_extra_table.db", "SQLAlchemy 2.0.36 create_all", "unstamped", None,
           "table settings: unexpected table (no revision has it",
           "a table of the old app that no revision has; the message says how to go on")
    b.sqlalchemy(SA20, "sa20_missing_column.db", missing_last_name=True)
    expect("sa20_missing_column.db", "SQLAlchemy 2.0.36 create_all", "unstamped", None,
           "table users: column last_name missing (revision 1 adds it)",
           "the bot writes last_name")
    b.sqlalchemy(SA20, "sa20_extra_column.db", extra_column=True)
    expect("sa20_extra_column.db", "SQLAlchemy 2.0.36 create_all", "unstamped", None,
           "table users: unexpected column nickname; revision 4 rebuilds users and would drop it and its data",
           "an extra column: revision 4's rebuild copies only the columns it knows")
    b.sqlalchemy(SA20, "sa20_autoincrement.db", autoincrement=True)
    expect("sa20_autoincrement.db", "SQLAlchemy 2.0.36 create_all", "unstamped", None,
           "table users: AUTOINCREMENT not expected",
           "sqlite_autoincrement=True: ids are never reused, unlike revision 1's")
    b.sqlalchemy(SA20, "sa20_boolean_check.db", boolean_check=True)
    expect("sa20_boolean_check.db", "SQLAlchemy 2.0.36 create_all", "unstamped", None,
           "unexpected CHECK (is_admin IN (0, 1))",
           "Boolean(create_constraint=True) adds a CHECK revision 1 lacks")

    # --- Alembic ----------------------------------------------------------------------------
    b.alembic(SA20, "alembic20_autogenerate_r1.db", [(1, {})])
    expect("alembic20_autogenerate_r1.db", "Alembic 1.12.1 on SQLAlchemy 2.0.36: revision --autogenerate, upgrade head",
           "foreign", 1, None,
           "the old app's models through an autogenerated migration; alembic_version is another tool's history, left alone")
    b.alembic(SA20, "alembic20_autogenerate_r1_r2_r3.db", [(1, {}), (2, {}), (3, {})])
    expect("alembic20_autogenerate_r1_r2_r3.db", "Alembic 1.12.1 on SQLAlchemy 2.0.36: three autogenerated revisions, upgrade head",
           "foreign", 3, None,
           "added columns and a new table through Alembic give revision 3's schema")
    b.alembic(SA20, "alembic20_autogenerate_r4.db", [(4, {})])
    expect("alembic20_autogenerate_r4.db", "Alembic 1.12.1 on SQLAlchemy 2.0.36: revision --autogenerate, upgrade head",
           "foreign", 4, None, "revision 4's models in one autogenerated migration")
    b.alembic(SA13, "alembic13_autogenerate_r1.db", [(1, {})])
    expect("alembic13_autogenerate_r1.db", "Alembic 1.12.1 on SQLAlchemy 1.3.24: revision --autogenerate, upgrade head",
           "foreign", None, "unexpected CHECK (is_admin IN (0, 1))",
           "SQLAlchemy 1.3's Boolean CHECK again, through Alembic")
    seed = os.path.join(out, "sa20_create_all_r1.db")
    b.alembic(SA20, "alembic20_blind_stamp_head.db", [(4, {})], prepare=seed)
    expect("alembic20_blind_stamp_head.db", "SQLAlchemy 2.0.36 create_all, then Alembic 1.12.1 stamp head (head = revision 4's models)",
           "foreign", 1, None,
           "the seed document's `alembic stamp head`: alembic_version says head, the schema is still revision 1, and the engine says 1")

    # --- The sqlite3 shell --------------------------------------------------------------------
    b.shell("shell_empty.db", "VACUUM;")
    expect("shell_empty.db", "sqlite3 shell", "empty", None, None, "a database with no tables")
    for k in range(1, 5):
        b.shell("shell_r%d.db" % k, up_to(k) + "\n" + ROWS)
        expect("shell_r%d.db" % k, "sqlite3 shell: migrations/sql up to %d" % k, "unstamped", k, None,
               "this build's own SQL for revisions 1 to %d, run by the shell" % k)
    b.shell("shell_handwritten_r1.db", read(HANDWRITTEN, "r1.sql") + "\n" + ROWS)
    expect("shell_handwritten_r1.db", "sqlite3 shell", "unstamped", 1, None,
           "revision 1 in another style: case, quoting, column constraints, other type names of the same affinity")
    b.shell("dump_sa20_r1.db", "", source=os.path.join(out, "sa20_create_all_r1.db"))
    expect("dump_sa20_r1.db", "sqlite3 old.db .dump | sqlite3 new.db (SQLAlchemy 2.0 create_all)", "unstamped", 1, None,
           "a .dump round trip keeps the CREATE statements and rows")
    b.shell("dump_shell_r4.db", "", source=os.path.join(out, "shell_r4.db"))
    expect("dump_shell_r4.db", "sqlite3 old.db .dump | sqlite3 new.db (revision 4)", "unstamped", 4, None,
           "a .dump round trip of revision 4, whose users table was renamed by its rebuild")
    b.shell("dump_alembic20_r1.db", "", source=os.path.join(out, "alembic20_autogenerate_r1.db"))
    expect("dump_alembic20_r1.db", "sqlite3 old.db .dump | sqlite3 new.db (Alembic)", "foreign", 1, None,
           "the dump keeps alembic_version and its row")
    b.shell("shell_wal_r1.db", "PRAGMA journal_mode = WAL;\n" + R1 + "\n" + ROWS)
    expect("shell_wal_r1.db", "sqlite3 shell, PRAGMA journal_mode = WAL", "unstamped", 1, None,
           "a WAL-mode file reads the same")

    # DB Browser for SQLite writes every name quoted and the key as a table constraint.
    dbbrowser = '''CREATE TABLE "users" (
	"id"	INTEGER NOT NULL UNIQUE,
	"telegram_id"	BIGINT NOT NULL UNIQUE,
	"username"	VARCHAR(64),
	"first_name"	VARCHAR(128),
	"last_name"	VARCHAR(128),
	"is_admin"	BOOLEAN NOT NULL DEFAULT 0,
	"created_at"	DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
	PRIMARY KEY("id"%s)
);
'''
    b.shell("dbbrowser_autoincrement.db", dbbrowser % " AUTOINCREMENT" + ROWS)
    expect("dbbrowser_autoincrement.db", "sqlite3 shell, DB Browser for SQLite's DDL", "unstamped", None,
           "table users: AUTOINCREMENT not expected",
           "DB Browser's default key is AUTOINCREMENT: ids are never reused, and revision 4's rebuild would drop it")
    b.shell("dbbrowser_plain_key.db", dbbrowser % "" + ROWS)
    expect("dbbrowser_plain_key.db", "sqlite3 shell, DB Browser for SQLite's DDL without AUTOINCREMENT", "unstamped", 1, None,
           "quoted names, and UNIQUE on the rowid, which adds nothing the key does not enforce")
    b.shell("dbbrowser_column_key.db",
            '''CREATE TABLE "users" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT UNIQUE, "telegram_id" BIGINT NOT NULL UNIQUE,
"username" VARCHAR(64), "first_name" VARCHAR(128), "last_name" VARCHAR(128), "is_admin" BOOLEAN NOT NULL DEFAULT 0,
"created_at" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP);
''' + ROWS)
    expect("dbbrowser_column_key.db", "sqlite3 shell, DB Browser style column key", "unstamped", None,
           "table users: AUTOINCREMENT not expected",
           "\"id\" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT UNIQUE: a rowid alias, but AUTOINCREMENT")

    variants = [
        ("shell_int_primary_key.db", r1_with("id INTEGER NOT NULL,", "id INT NOT NULL,"),
         "column id: a rowid alias (INTEGER PRIMARY KEY) expected, found INT PRIMARY KEY (not an alias: an insert without an id fails)",
         "INT is not INTEGER: not the rowid"),
        ("shell_integer_primary_key_desc.db",
         r1_with("id INTEGER NOT NULL,", "id INTEGER PRIMARY KEY DESC,").replace("PRIMARY KEY (id),", "", 1),
         "found INTEGER PRIMARY KEY DESC (a SQLite quirk",
         "INTEGER PRIMARY KEY DESC as a column constraint is an ordinary key (sqlite.org/lang_createtable.html#rowid)"),
        ("shell_without_rowid.db", r1_with("UNIQUE (telegram_id)\n);", "UNIQUE (telegram_id)\n) WITHOUT ROWID;"),
         "table users: WITHOUT ROWID not expected", "no rowid: inserts need an id"),
        ("shell_strict.db",
         "CREATE TABLE users (id INTEGER NOT NULL, telegram_id INTEGER NOT NULL, username TEXT, first_name TEXT, last_name TEXT, is_admin ANY DEFAULT 0 NOT NULL, created_at ANY DEFAULT CURRENT_TIMESTAMP NOT NULL, PRIMARY KEY (id), UNIQUE (telegram_id)) STRICT;\n" + ROWS,
         "table users: STRICT not expected", "a STRICT table refuses what revision 1 converts"),
        ("shell_check.db", r1_with("UNIQUE (telegram_id)\n", "UNIQUE (telegram_id),\n\tCHECK (length(username) <= 64)\n"),
         "table users: unexpected CHECK (length(username) <= 64)", "a CHECK refuses rows revision 1 takes"),
        ("shell_collate_nocase.db", r1_with("username VARCHAR(64),", "username VARCHAR(64) COLLATE NOCASE,"),
         "table users: column username: collation BINARY expected, found NOCASE", "comparisons on username ignore case"),
        ("shell_unique_on_conflict_replace.db", r1_with("UNIQUE (telegram_id)", "UNIQUE (telegram_id) ON CONFLICT REPLACE"),
         "UNIQUE (telegram_id) expected, found UNIQUE (telegram_id) ON CONFLICT REPLACE",
         "a duplicate telegram_id deletes the old row instead of failing"),
        ("shell_generated_column.db",
         r1_with("last_name VARCHAR(128),", "last_name VARCHAR(128), display_name TEXT GENERATED ALWAYS AS (coalesce(username, first_name)) VIRTUAL,"),
         "unexpected column display_name; revision 4 rebuilds users and would drop it and its data",
         "a generated column revision 1 lacks"),
        ("shell_generated_username.db",
         r1_with("username VARCHAR(64),", "username VARCHAR(64) AS ('user' || telegram_id) STORED,"),
         "column username: a generated column (AS ('user' || telegram_id) STORED) not expected: an insert cannot set it",
         "the bot writes username; a generated column cannot be written"),
        ("shell_view_on_users.db", R1 + "\nCREATE VIEW admins AS SELECT * FROM users WHERE is_admin;\n" + ROWS,
         "view admins: not in revision 1; revision 4 rebuilds users and would fail on it",
         "ALTER TABLE ... RENAME in revision 4 fails on a view that reads users"),
        ("shell_trigger_on_users.db",
         R1 + "\nCREATE TRIGGER keep_admins BEFORE DELETE ON users WHEN old.is_admin BEGIN SELECT RAISE(ABORT, 'admins stay'); END;\n" + ROWS,
         "trigger keep_admins on users: not in revision 1; revision 4 rebuilds users and would drop it",
         "DROP TABLE in revision 4's rebuild drops the trigger silently"),
        ("shell_default_false.db", r1_with("DEFAULT 0 NOT NULL", "DEFAULT FALSE NOT NULL"), None,
         "DEFAULT FALSE stores 0"),
        ("shell_default_zero_real.db", r1_with("DEFAULT 0 NOT NULL", "DEFAULT 0.0 NOT NULL"), None,
         "DEFAULT 0.0 in a NUMERIC column stores 0"),
        ("shell_rowid_without_not_null.db",
         r1_with("id INTEGER NOT NULL,", "id INTEGER PRIMARY KEY,").replace("PRIMARY KEY (id),", "", 1), None,
         "a rowid alias is never NULL, NOT NULL or not"),
        ("shell_default_text_zero_real.db", r1_with("username VARCHAR(64),", "username VARCHAR(64) DEFAULT 0.0,"),
         "column username: default none expected, found '0.0'",
         "a TEXT column stores DEFAULT 0.0 as the text '0.0'"),
    ]
    for name, sql, difference, reason in variants:
        b.shell(name, sql)
        expect(name, "sqlite3 shell", "unstamped", 1 if difference is None else None, difference, reason)

    head_sql = up_to(4) + "\n" + ROWS
    index = "CREATE INDEX ix_users_last_seen_at ON users (last_seen_at);"
    assert index in head_sql
    for name, new, found, reason in [
        ("shell_desc_index_r4.db", "CREATE INDEX ix_users_last_seen_at ON users (last_seen_at DESC);",
         "(last_seen_at DESC)", "sort order"),
        ("shell_partial_index_r4.db",
         "CREATE INDEX ix_users_last_seen_at ON users (last_seen_at) WHERE last_seen_at IS NOT NULL;",
         "(last_seen_at) WHERE last_seen_at IS NOT NULL", "a partial index serves fewer queries"),
        ("shell_expression_index_r4.db", "CREATE INDEX ix_users_last_seen_at ON users (date(last_seen_at));",
         "(date(last_seen_at))", "an index on an expression, not on the column"),
        ("shell_unique_index_r4.db", "CREATE UNIQUE INDEX ix_users_last_seen_at ON users (last_seen_at);",
         "UNIQUE (last_seen_at)", "a UNIQUE index refuses rows the plain one takes"),
    ]:
        b.shell(name, head_sql.replace(index, new, 1))
        expect(name, "sqlite3 shell", "unstamped", None,
               "table users: index ix_users_last_seen_at: (last_seen_at) expected, found " + found, reason)
    b.shell("shell_fk_set_null_r3.db", up_to(3).replace("ON DELETE CASCADE", "ON DELETE SET NULL") + "\n" + ROWS)
    expect("shell_fk_set_null_r3.db", "sqlite3 shell", "unstamped", None,
           "foreign key (user_id) -> users(id): ON DELETE CASCADE expected, found ON DELETE SET NULL",
           "deleting a user keeps its log rows instead of deleting them")

    ENTRIES.sort(key=lambda e: e["file"])
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(ENTRIES, f, indent=1)
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default=HERE)
    b.add_argument("--venvs", required=True)
    s = sub.add_parser("sqlalchemy")
    s.add_argument("--out", required=True)
    s.add_argument("--revision", type=int, default=1)
    s.add_argument("--variant", default="{}")
    args = parser.parse_args()
    if args.role == "build":
        build(os.path.abspath(args.out), os.path.abspath(args.venvs))
    else:
        sqlalchemy_main(args)


if __name__ == "__main__":
    main()
