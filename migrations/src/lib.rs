//! The bot's SQLite schema history (`migrations/sql/`, compiled in) and the engine that applies it.
//!
//! # The history
//!
//! `sql/NNNN_<name>.up.sql` brings the database to revision NNNN; `sql/NNNN_<name>.down.sql`, where
//! a step can be undone, takes it back. Revision 1 is exactly the schema the old app's create-all
//! made. The engine records applied revisions in its own table, [`HISTORY_TABLE`], one row per
//! revision: version, name, SHA-256 of the `.up.sql` file, when, and how (`applied`, `stamped`, or
//! `forced` when stamped over a schema that differed). The files compiled in are
//! [`Catalog::released`]; the engine decides and migrates along the [`Catalog`] a
//! [`Database`] holds, so a test can hand it migrations of its own.
//!
//! # What the engine promises
//!
//! - Every state is named ([`State`]): `empty`, `unstamped` (tables, no history: the revision the
//!   live schema matches, or none), `foreign` (another tool's history such as `alembic_version`,
//!   reported and left alone), `behind`, `current`, `ahead`, `modified` (an applied file was
//!   edited: both checksums), `drifted` (the live schema is not the recorded revision's).
//! - Matching compares behaviour, not SQL text ([`schema`]; the rule is below).
//! - Each migration and its history row run in one transaction taken with the write lock first
//!   (`BEGIN IMMEDIATE`, busy timeout [`BUSY_TIMEOUT`]), the history read again under the lock:
//!   two processes started together apply each migration once. Foreign keys are switched off
//!   around the transaction and `foreign_key_check` runs before COMMIT. A database is always
//!   before or after a migration, never in between.
//! - A caller may set a commit gate ([`Database::set_commit_gate`]): asked with the state read
//!   under the lock just before each COMMIT of the history, it can hold the commit back (the
//!   transaction is rolled back, [`Error::HeldBack`]): e.g. until a copy taken before the
//!   migration, checked while the migration runs, is known to be fit to restore.
//! - Every command that writes the history (`stamp`, `adopt`, `upgrade --adopt`, each step of
//!   `upgrade` and `downgrade`, `restore`) reads the history and the schema again under the
//!   write lock and decides there: a decision never rests on a state another process changed.
//!   A downgrade that finds the database moved stops ([`Error::Moved`]); `restore` holds one lock
//!   from its decision to the end of its copy.
//! - A folder, a missing folder, a folder this user may not write, a file that is not SQLite,
//!   is shorter than its header says or fails `quick_check` is refused before it is ever opened
//!   for writing. What a writer killed mid-transaction left (a hot `-journal`, a `-wal` no
//!   process has open) is first recovered as SQLite recovers it ([`Database::recover`]), the
//!   only write before the check: it puts back the committed state.
//! - `restore` refuses a file of 0 bytes or without tables over a database with tables (unless
//!   forced), and keeps the database it replaces as `<name>.replaced-<UTC time>` ([`Restored`]).
//! - For a schema that matches nothing, [`Database::diff_to`] prints the SQL that makes it
//!   revision N's (checked on an in-memory copy of the schema first), and
//!   [`Database::baseline`] prints a database's schema as a first migration; both only read.
//!
//! # When a live schema "matches revision N"
//!
//! Only when every statement the bot and the migrations run behaves the same on it as on
//! revision N's own schema. [`schema::read`] takes what SQLite records, from `sqlite_schema` and
//! pragmas only (never table data, so `status` stays fast on any size of file):
//!
//! | what | from |
//! | --- | --- |
//! | tables, `WITHOUT ROWID`, `STRICT` | `PRAGMA table_list` (`type`, `wr`, `strict`) |
//! | columns: declared type, NOT NULL, default, primary key, generated (VIRTUAL, STORED) | `pragma_table_xinfo` (`hidden` 2 and 3) |
//! | whether the primary key is the rowid | SQLite itself: a rowid table whose key is one column and has no index of origin `pk` |
//! | CHECK, COLLATE on a column, conflict clauses (`ON CONFLICT ...` of PRIMARY KEY, UNIQUE, NOT NULL), AUTOINCREMENT, generated expressions, `DEFERRABLE INITIALLY DEFERRED` | the `CREATE TABLE` text in `sqlite_schema.sql` |
//! | UNIQUE constraints and indexes: keys, sort order, collation per key, unique, origin | `pragma_index_list`, `pragma_index_xinfo` |
//! | index expressions and a partial index's WHERE | the `CREATE INDEX` text |
//! | foreign keys and their ON UPDATE / ON DELETE actions | `pragma_foreign_key_list` |
//! | views and triggers | their own rows of `sqlite_schema` |
//!
//! The history tables (this engine's and another tool's, such as `alembic_version`) are left
//! out, with their indexes: only a row of type `table` with exactly such a name. A view or a
//! trigger is read whatever its name (a trigger named `schema_migrations` is a trigger), and so
//! is a trigger on a history table, which fires when the history is written.
//!
//! The `CREATE` text is read with SQLite's own tokenizer rules: whitespace is only space, tab,
//! newline, form feed and carriage return (any character from U+0080 up, a non-breaking space
//! too, is part of a name), and a string literal names a column, a referenced table or a
//! collation where SQLite takes it as one (`UNIQUE ('telegram_id')`, `REFERENCES 'users'`), as
//! does a bracketed name (`UNIQUE ((telegram_id))`). Several UNIQUE clauses on the same keys
//! are one index to SQLite, with the one conflict clause among them that is not the default;
//! so they are here.
//!
//! SQL text (CHECK, WHERE, expressions, generated columns, defaults that are expressions, views,
//! triggers) is compared in a canonical spelling: keywords upper case, names lower case and
//! unquoted (`"Is_Admin"`, `[is_admin]` and `is_admin` are one name: SQLite's names ignore ASCII
//! case), comments dropped, one space between tokens, brackets around a whole expression
//! dropped, `==` read as `=` and `<>` as `!=`. String literals keep their case.
//!
//! Anything SQLite records that revision N does not have, or the other way round, is a named
//! difference: a table, column, view or trigger; a column's type affinity, NOT NULL, default,
//! place in the primary key, rowid-ness, collation, generated expression or NOT NULL conflict
//! clause; `WITHOUT ROWID`, `STRICT`, AUTOINCREMENT, the PRIMARY KEY's conflict clause; a UNIQUE
//! constraint's keys or conflict clause; a CHECK; an index's name, keys (column or expression,
//! collation, sort order), uniqueness or WHERE; a foreign key's columns, target, actions or
//! deferral. Each line says what was expected and what was found, with the definition (a
//! UNIQUE index and a plain one read differently), and what a later migration would do to it:
//! `trigger keep_admins on users: not in revision 1; revision 4 rebuilds users and would drop
//! it`, `view admins: not in revision 1; revision 4 rebuilds users and would fail on it`.
//!
//! ## What is tolerated, and why
//!
//! Each of these reads the same for every statement, so they match:
//!
//! - **How it is spelled**: identifier quoting and case, keyword case, whitespace, comments,
//!   constraint names (`CONSTRAINT pk_users PRIMARY KEY (id)`): SQLite resolves names without
//!   regard to ASCII case and never uses a constraint's name but in an error message.
//! - **The declared type, beyond its affinity**: `VARCHAR(255)`, `TEXT` and `NVARCHAR(64)` are all
//!   TEXT affinity, and SQLite enforces no length. (In a STRICT table the type matters, but a
//!   STRICT table is itself a difference.) The one exception is the rowid, below.
//! - **NOT NULL on a rowid alias**: `INTEGER PRIMARY KEY` is never NULL (an insert of NULL gives
//!   it the next rowid), so with or without `NOT NULL` it behaves the same; likewise the key of a
//!   WITHOUT ROWID table.
//! - **A default, as the value an insert stores**: a constant default goes through the column's
//!   affinity like any inserted value, so it is compared as SQLite stores it, asked of SQLite
//!   (an in-memory table with the same affinity): `DEFAULT FALSE`, `0`, `(0)`, `0.0`, `'0'` all
//!   store the integer 0 in a NUMERIC or INTEGER column, `TRUE` and `1` store 1; in a TEXT column
//!   `0` and `'0'` both store the text `'0'` but `0.0` stores `'0.0'`, a difference. `DEFAULT
//!   NULL` is no default. A name with no brackets around it (`DEFAULT "0"`, `DEFAULT abc`) is a
//!   string literal to SQLite (`'0'`, `'abc'`, case kept) and is compared as one. A default that
//!   is an expression (`CURRENT_TIMESTAMP`, a function) is compared as canonical text, brackets
//!   around it dropped, except that `datetime('now')`, `date('now')` and `time('now')` read as
//!   `CURRENT_TIMESTAMP`, `CURRENT_DATE` and `CURRENT_TIME`: SQLite implements the keywords as
//!   these very calls on the same statement time, so they store the same text
//!   (`datetime('now', 'localtime')` and other modifiers stay different).
//! - **Where a constraint is written**: UNIQUE, PRIMARY KEY and CHECK as column or table
//!   constraints are the same constraint; `REFERENCES users` names the primary key of `users`
//!   as `REFERENCES users (id)` does; `ON CONFLICT ABORT`, `COLLATE BINARY`, `NOT DEFERRABLE`
//!   and `DEFERRABLE INITIALLY IMMEDIATE` are the defaults written out; a foreign key's `MATCH`
//!   clause is parsed but not enforced by SQLite.
//! - **A UNIQUE constraint on exactly the primary key** (DB Browser's `"id" INTEGER NOT NULL
//!   UNIQUE`): the key already enforces it.
//! - **Column order**: every statement of the bot and of the migrations names its columns.
//! - **A UNIQUE index standing in for a UNIQUE constraint** (SQLAlchemy's `unique=True,
//!   index=True` makes `CREATE UNIQUE INDEX ix_users_telegram_id` instead of `UNIQUE
//!   (telegram_id)`): for inserts, updates and `ON CONFLICT (telegram_id)` upserts a full UNIQUE
//!   index and a UNIQUE constraint are the same rule. The migrations differ in one way: a
//!   rebuild (revision 4) copies what its own `CREATE TABLE` says, not the old table's indexes;
//!   since revision 4's `CREATE TABLE` declares `UNIQUE (telegram_id)` itself, the rebuild turns
//!   the index into the constraint and the result is exactly revision 4 (a test upgrades such a
//!   database from revision 1 to head). So an index stands in only where that holds: it is
//!   UNIQUE, has no WHERE, has the same keys (collation and order included), and the revision
//!   has no index of that name and no conflict clause on the constraint (an index cannot carry
//!   one). The other way round is not tolerated: when a revision declares a named UNIQUE index, a
//!   later migration may `DROP INDEX` it by name, which a constraint's automatic index refuses.
//!   What is left: a stand-in index's name is taken, so a future migration that creates an index
//!   of that very name would fail (and roll back, with a message naming it).
//!
//! Not tolerated, though a tool may write it unasked: SQLAlchemy 1.3's `Boolean` adds `CHECK
//! (is_admin IN (0, 1))`, which revision 1 lacks (an insert of 2 fails there and not here);
//! `BIGINT` or `INT` primary keys (not the rowid: an insert without an id fails, or stores a
//! NULL id); AUTOINCREMENT (ids are never reused). These are all in the corpus
//! (`tests/corpus/expected.json`), with the reason for each verdict.
//!
//! # JSON
//!
//! `bot db <command> --json` prints one object on stdout, on success and on failure: the types of
//! [`json`], which the bot serializes and the deploy tool deserializes, are its definition.

mod catalog;
pub mod check;
mod engine;
pub mod json;
pub mod schema;
mod script;

pub use catalog::{Catalog, MIGRATIONS, Migration, head, migration, schema_at};
pub use engine::{
    BUSY_TIMEOUT, BackupInfo, Commit, Database, EditedFile, Error, ForeignHistory, GateError,
    HISTORY_TABLE, HistoryRow, LockHolder, Pinned, Plan, PlannedStep, Recovery, Restored,
    RowCounts, State, Status, Upgrade, busy_timeout, explain, inspect_copy, quick_inspect_copy,
    set_busy_timeout,
};
pub use script::{Baseline, DiffScript, ScriptStatement, StatementKind};
