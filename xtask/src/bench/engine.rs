//! The migration engine, and how its cost grows with the database: `bot db status`, `adopt`, the
//! revision-4 `users` rebuild and `backup` at 10k to 10M users, each beside the tool a person
//! would use instead, on the same file: `alembic current`, `PRAGMA quick_check` in the `sqlite3`
//! shell, the shell running the same rebuild SQL, and the shell's `.backup`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use super::*;
use crate::{process, project};

/// The sizes measured, in users.
const SIZES: [u64; 4] = [10_000, 100_000, 1_000_000, 10_000_000];
/// Rows of `command_log` per user in the generated databases.
const LOG_ROWS_PER_USER: u64 = 2;
/// Part of the generated databases' names: bump it when the generator changes, so that a
/// database made by an older generator is not measured again.
const GENERATOR: u32 = 1;
/// Timed runs of the commands whose cost does not grow with the file (`status` and
/// `alembic current`): cheap, and a few milliseconds need more samples to settle.
const QUICK_RUNS: usize = 21;
/// The target for `status`.
const STATUS_LIMIT: Duration = Duration::from_millis(5);
/// The target for `adopt`, as a ratio to `PRAGMA quick_check` alone.
const ADOPT_RATIO: f64 = 1.2;
/// The target for the rebuild, as a ratio to the `sqlite3` shell running the same SQL.
const REBUILD_RATIO: f64 = 1.0;
/// Files an older version of this benchmark left in its folder.
const OLD_FILES: [&str; 5] = [
    "current.db",
    "large.db",
    "rebuild.db",
    "rebuild-template.db",
    "rebuild-template.partial.db",
];

/// Timed runs of the commands whose cost grows with the file.
fn runs(users: u64) -> usize {
    if users >= 1_000_000 { 3 } else { 5 }
}

/// What is measured at each size, in the order of the rows.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Status,
    Adopt,
    Rebuild,
    /// The same run of `bot db upgrade`, beside the shell running the migration's SQL alone.
    RebuildSqlOnly,
    Backup,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Status,
        Op::Adopt,
        Op::Rebuild,
        Op::RebuildSqlOnly,
        Op::Backup,
    ];

    fn ours(self) -> &'static str {
        match self {
            Op::Status => "`bot db status`",
            Op::Adopt => "`bot db adopt`",
            Op::Rebuild | Op::RebuildSqlOnly => {
                "`bot db upgrade` (revision 3 to the head: the `users` rebuild, then revision 5)"
            }
            Op::Backup => "`bot db backup`",
        }
    }

    fn theirs(self) -> &'static str {
        match self {
            Op::Status => "`alembic current`",
            Op::Adopt => "`sqlite3`: `PRAGMA quick_check`",
            Op::Rebuild => "`sqlite3` running the same SQL with `PRAGMA foreign_key_check`",
            Op::RebuildSqlOnly => "`sqlite3` running the migration's SQL alone, unchecked",
            Op::Backup => "`sqlite3`: `.backup`",
        }
    }
}

/// One cell of the growth table: a command and its comparison at one size.
struct Cell {
    op: Op,
    users: u64,
    bytes: u64,
    ours: Duration,
    theirs: Duration,
}

impl Cell {
    fn ratio(&self) -> f64 {
        self.ours.as_secs_f64() / self.theirs.as_secs_f64()
    }

    fn measurement(&self) -> Measurement {
        let ratio = self.ratio();
        // The target as shown, and whether this cell meets it.
        let (target, met) = match self.op {
            Op::Status => (
                format!("under {} ms", STATUS_LIMIT.as_millis()),
                self.ours < STATUS_LIMIT,
            ),
            Op::Adopt => (format!("within {ADOPT_RATIO:.1}x"), ratio <= ADOPT_RATIO),
            Op::Rebuild => (
                format!("within {REBUILD_RATIO:.1}x"),
                ratio <= REBUILD_RATIO,
            ),
            Op::RebuildSqlOnly | Op::Backup => ("(ratio reported)".into(), true),
        };
        Measurement {
            name: format!(
                "{} at {} users ({})",
                self.op.ours(),
                label(self.users),
                size(self.bytes)
            ),
            ours: format!("{} ({ratio:.2}x)", show(self.ours)),
            baseline: format!("{}: {}", self.op.theirs(), show(self.theirs)),
            target,
            met,
        }
    }
}

/// The tools and files every measurement uses.
struct Bench<'a> {
    sh: &'a Shell,
    bot: PathBuf,
    sqlite3: PathBuf,
    alembic: Alembic,
    dir: PathBuf,
    /// The rebuild as the `sqlite3` shell runs it (a file it `.read`s).
    rebuild_sql: PathBuf,
    /// The migration's SQL alone in one transaction, for the shell.
    bare_sql: PathBuf,
}

/// Runs the engine benchmarks.
pub fn run(sh: &Shell) -> anyhow::Result<Section> {
    let clock = Clock::start();
    let bot = release_binaries(sh)?.0;
    let sqlite3 = sqlite3(sh)?;
    let version = process::run(cmd!(sh, "{sqlite3} --version"), "sqlite3 --version")?.stdout;
    let version = version.split_whitespace().next().unwrap_or("?");
    let dir = work_dir().join("engine");
    std::fs::create_dir_all(&dir)?;
    remove_old(&dir, &OLD_FILES, "engine");
    let bench = Bench {
        sh,
        bot,
        sqlite3,
        alembic: alembic(sh, &dir)?,
        rebuild_sql: rebuild_script(&dir.join("rebuild.sql"), true)?,
        bare_sql: rebuild_script(&dir.join("rebuild-sql-only.sql"), false)?,
        dir,
    };
    let mut cells = Vec::new();
    let mut generating = Duration::ZERO;
    let mut kept = 0;
    for users in SIZES {
        let (template, took) = template(&bench, users)?;
        generating += took;
        let bytes = std::fs::metadata(&template)?.len();
        kept += bytes;
        let mut sql_only = None;
        for op in Op::ALL {
            let (ours, theirs) = match op {
                Op::Status => bench.status(&template, users)?,
                Op::Adopt => bench.adopt(&template, users)?,
                Op::Rebuild => {
                    let (ours, checked, bare) = bench.rebuild(&template, users)?;
                    sql_only = Some((ours, bare));
                    (ours, checked)
                }
                Op::RebuildSqlOnly => sql_only.take().context("the rebuild runs first")?,
                Op::Backup => bench.backup(&template, users)?,
            };
            let cell = Cell {
                op,
                users,
                bytes,
                ours,
                theirs,
            };
            eprintln!(
                "engine: {} users: {} {} against {} {} ({:.2}x)",
                label(users),
                op.ours(),
                show(ours),
                op.theirs(),
                show(theirs),
                cell.ratio()
            );
            cells.push(cell);
        }
    }
    // The rows by command, each command's in size order (the sort is stable).
    cells.sort_by_key(|c| c.op);
    Ok(Section {
        title: "Migration engine: how cost grows".into(),
        method: method(version, &bench.alembic.versions, kept, generating, &clock),
        rows: cells.iter().map(Cell::measurement).collect(),
    })
}

fn method(sqlite3: &str, alembic: &str, kept: u64, generating: Duration, clock: &Clock) -> String {
    format!(
        "Each command and its comparison run on the same database at each size: {sizes} users at revision 3 (the `users` table of the old app plus `language_code` and `last_seen_at`; rows like `user123`, `First123`, `Last123`, one admin in 100, timestamps; {LOG_ROWS_PER_USER} `command_log` rows per user; the `schema_history` of `bot db upgrade` then `downgrade --to 3`; and an Alembic `alembic_version` at `r0003`). The databases are generated once by the `sqlite3` shell in one transaction (`journal_mode=OFF`, `synchronous=OFF`) and kept in `target/bench/engine/` ({kept} for the four; made again only when missing or no longer read as revision 3); working copies are deleted after each size.\n\n\
         Both sides are whole processes timed from spawn to exit, with default settings (rollback journal, `synchronous=FULL`): `bot` is the static release binary the image ships; `sqlite3` is the system's shell ({sqlite3}); Alembic ({alembic}) is installed from PyPI into `target/bench/venv`, with an Alembic project whose four revisions mirror ours. The two sides alternate, each run once untimed first so that the page cache is warm for both; a cell is the median of {QUICK_RUNS} runs for `status` and `alembic current`, and of 5 runs (3 at 1M and 10M users) for the others. The ratio is ours divided by the comparison.\n\n\
         - `status`: `bot db status` against `alembic current`, both reading the same file.\n\
         - `adopt`: `bot db adopt` on a copy of the database whose `schema_history` is dropped (untimed) before each run, so each run checks the file, reads the schema, matches it to revision 3 and writes the history; against `sqlite3 FILE 'PRAGMA quick_check'` on the same copy.\n\
         - rebuild: `bot db upgrade` (revision 3 to the head: `migrations/sql/0004_users_rebuild.up.sql`, then `0005_handled_updates_stats.up.sql`, which fills the /stats summaries from the rows) against `sqlite3 -bail FILE '.read rebuild.sql'`, where `rebuild.sql` is the procedure of sqlite.org/lang_altertable.html as a person would run it in the shell, with the checks the engine makes: `PRAGMA foreign_keys = OFF`, `BEGIN IMMEDIATE`, the same SQL, `PRAGMA foreign_key_check`, the same history row (so the result is the engine's own revision), `COMMIT`, once per migration. The engine also runs `PRAGMA quick_check` before it writes, and checks foreign keys its own way: a one-column reference to a parent's rowid (here `command_log.user_id`) is checked by walking the child's distinct values in index order, each parent looked up once and in key order, where `foreign_key_check` seeks the parent of every child row in rowid order; any other reference, and any violation, goes to `foreign_key_check` itself (`migrations/src/engine/foreign_keys.rs`, whose tests hold the two to the same verdict on values of every type). A second row sets the same runs of `bot db upgrade` beside the shell running the migration's SQL alone (`PRAGMA foreign_keys = OFF`, `BEGIN IMMEDIATE`, the SQL, `COMMIT`: no check at all, no history row), to show what the checks cost. Each run, on any side, gets a fresh copy of the database, written through the page cache and flushed before the clock starts; after each run of the first two `bot db status` must read the result as current at the head.\n\
         - `backup`: `bot db backup DEST` (online backup API, then `integrity_check` of the copy) against `sqlite3 -readonly FILE '.backup DEST'`, from the kept database to a new file each run.\n\n\
         {}: other work on the machine shows in the millisecond cells.",
        clock.summary(&format!(" (generating databases: {})", long(generating))),
        sizes = SIZES.map(label).join(", "),
        kept = size(kept),
    )
}

impl Bench<'_> {
    fn status(&self, db: &Path, users: u64) -> anyhow::Result<(Duration, Duration)> {
        let ini = self.alembic.ini(&self.dir, users, db)?;
        let ini = path_str(&ini)?;
        pair(
            QUICK_RUNS,
            || bot_db(&self.bot, db, &["status"]),
            || time(&self.alembic.program, &["-c", ini, "current"], &[]),
        )
    }

    fn adopt(&self, template: &Path, users: u64) -> anyhow::Result<(Duration, Duration)> {
        let db = self.dir.join("work-adopt.db");
        warm_copy(template, &db)?;
        let text = path_str(&db)?;
        let result = pair(
            runs(users),
            || {
                sql(self.sh, &self.sqlite3, &db, "DROP TABLE schema_history;")?;
                bot_db(&self.bot, &db, &["adopt"])
            },
            || time(&self.sqlite3, &[text, "PRAGMA quick_check;"], &[]),
        );
        fresh(&db);
        result
    }

    /// The rebuild by `bot db upgrade`, by the shell doing what the engine does, and by the
    /// shell running the migration's SQL alone: the three alternate, each on a fresh copy.
    fn rebuild(
        &self,
        template: &Path,
        users: u64,
    ) -> anyhow::Result<(Duration, Duration, Duration)> {
        let db = self.dir.join("work-rebuild.db");
        let text = path_str(&db)?;
        let read = format!(".read '{}'", path_str(&self.rebuild_sql)?);
        let read_bare = format!(".read '{}'", path_str(&self.bare_sql)?);
        let shell = |script: &str| -> anyhow::Result<Duration> {
            warm_copy(template, &db)?;
            time(&self.sqlite3, &["-bail", text, script], &[])
        };
        let mut bare = Vec::new();
        // Both sides must leave the same result: current at the head.
        let result = pair(
            runs(users),
            || {
                warm_copy(template, &db)?;
                let took = bot_db(&self.bot, &db, &["upgrade"])?;
                expect_current(self.sh, &self.bot, &db, "after the rebuild,")?;
                Ok(took)
            },
            || {
                let took = shell(&read)?;
                expect_current(self.sh, &self.bot, &db, "after the rebuild,")?;
                bare.push(shell(&read_bare)?);
                Ok(took)
            },
        );
        fresh(&db);
        let (ours, checked) = result?;
        // The first of `bare` is pair's untimed warm-up run.
        Ok((ours, checked, median(bare.split_off(1))))
    }

    fn backup(&self, template: &Path, users: u64) -> anyhow::Result<(Duration, Duration)> {
        let dest = self.dir.join("work-backup.db");
        let text = path_str(&dest)?;
        let backup = format!(".backup '{text}'");
        let source = path_str(template)?;
        let result = pair(
            runs(users),
            || {
                fresh(&dest);
                bot_db(&self.bot, template, &["backup", text])
            },
            || {
                fresh(&dest);
                time(&self.sqlite3, &["-readonly", source, &backup], &[])
            },
        );
        fresh(&dest);
        result
    }
}

/// Times `ours` and `theirs` alternately, `runs` times each, after one untimed run of each (so
/// that the page cache is warm for both); returns the medians. What a closure does besides
/// the timed process (preparing a fresh copy, checking the result) is not timed.
fn pair(
    runs: usize,
    mut ours: impl FnMut() -> anyhow::Result<Duration>,
    mut theirs: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<(Duration, Duration)> {
    ours()?;
    theirs()?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(ours()?);
        b.push(theirs()?);
    }
    Ok((median(a), median(b)))
}

/// The kept database of `users` users at revision 3 (see [`kept`]), and how long generating
/// it took in this run.
fn template(bench: &Bench, users: u64) -> anyhow::Result<(PathBuf, Duration)> {
    let name = format!("revision3-{}-g{GENERATOR}.db", label(users));
    let db = bench.dir.join(name);
    let made = kept(bench.sh, &bench.bot, &db, 3, "engine", |partial| {
        bot_db(&bench.bot, partial, &["upgrade"])?;
        bot_db(&bench.bot, partial, &["downgrade", "--to", "3"])?;
        let log_rows = users * LOG_ROWS_PER_USER;
        sql(
            bench.sh,
            &bench.sqlite3,
            partial,
            &format!(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -1048576;
                 BEGIN;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {users})
                 INSERT INTO users (telegram_id, username, first_name, last_name, is_admin, created_at, language_code, last_seen_at)
                 SELECT 100000000 + i, 'user' || i, 'First' || i, 'Last' || i, i % 100 = 0,
                        datetime(1600000000 + i * 10, 'unixepoch'), 'en',
                        datetime(1700000000 + (i * 7919) % 30000000, 'unixepoch')
                 FROM n;
                 WITH RECURSIVE n(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM n WHERE j < {log_rows} - 1)
                 INSERT INTO command_log (user_id, command, used_at)
                 SELECT (j * 7919) % {users} + 1,
                        CASE j % 3 WHEN 0 THEN '/start' WHEN 1 THEN '/stats' ELSE '/help' END,
                        datetime(1700000000 + j * 30000000 / {log_rows}, 'unixepoch')
                 FROM n;
                 CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));
                 INSERT INTO alembic_version VALUES ('r0003');
                 COMMIT;"
            ),
        )
    })?;
    Ok((db, made.unwrap_or_default()))
}

/// Writes to `path` the migrations after revision 3 (the `users` rebuild, then revision 5's
/// tables and summaries) as a script for the `sqlite3` shell: each one's SQL in a transaction
/// of its own, as the engine runs them, with (`checked`) the foreign key handling a person
/// would add and the engine's history row, or without them. Returns `path`.
fn rebuild_script(path: &Path, checked: bool) -> anyhow::Result<PathBuf> {
    let mut script = String::new();
    for version in 4..=migrations::head() {
        let m =
            migrations::migration(version).with_context(|| format!("no migration {version}"))?;
        let on_disk = std::fs::read_to_string(project::root().join("migrations/sql").join(m.file))?;
        if on_disk != m.up {
            bail!(
                "migrations/sql/{} changed since xtask was built: run the benchmark again",
                m.file
            );
        }
        script += &format!("PRAGMA foreign_keys = OFF;\nBEGIN IMMEDIATE;\n{}\n", m.up);
        if checked {
            script.push_str(&format!(
                "PRAGMA foreign_key_check;\nINSERT INTO schema_history (version, name, checksum, how) VALUES ({}, '{}', '{}', 'applied');\n",
                m.version,
                m.name,
                m.checksum()
            ));
        }
        script.push_str("COMMIT;\n");
    }
    std::fs::write(path, script)?;
    Ok(path.to_owned())
}

/// The `sqlite3` shell, installed from the distribution when missing.
pub(super) fn sqlite3(sh: &Shell) -> anyhow::Result<PathBuf> {
    if let Ok(out) = cmd!(sh, "which sqlite3").quiet().ignore_status().output()
        && out.status.success()
    {
        return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    eprintln!("installing sqlite3 (apt-get) for the comparison");
    process::run(cmd!(sh, "apt-get install -y sqlite3"), "installing sqlite3")?;
    Ok(PathBuf::from("/usr/bin/sqlite3"))
}

/// Runs a script in the `sqlite3` shell (untimed); fails when it prints an error.
pub(super) fn sql(sh: &Shell, sqlite3: &Path, db: &Path, script: &str) -> anyhow::Result<()> {
    let shell = cmd!(sh, "{sqlite3} -bail {db} {script}");
    let out = process::run_within(shell, "running SQL in the sqlite3 shell", UNTIMED_LIMIT)?;
    if !out.stderr.is_empty() {
        bail!("sqlite3 {}: {}", db.display(), out.stderr);
    }
    Ok(())
}

/// `bot db ARGS` on `db`, timed.
pub(super) fn bot_db(bot: &Path, db: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    time(bot, &[&["db"], args].concat(), &[("DATABASE_PATH", db)])
}

/// Alembic, installed in a virtual environment, and a project whose four revisions mirror ours.
struct Alembic {
    program: PathBuf,
    /// `script_location` of the project.
    scripts: PathBuf,
    /// "alembic A.B.C, SQLAlchemy X.Y.Z".
    versions: String,
}

impl Alembic {
    /// An `alembic.ini` pointed at `db`.
    fn ini(&self, dir: &Path, users: u64, db: &Path) -> anyhow::Result<PathBuf> {
        let ini = dir.join(format!("alembic/alembic-{}.ini", label(users)));
        let (scripts, db) = (self.scripts.display(), db.display());
        let text =
            format!("[alembic]\nscript_location = {scripts}\nsqlalchemy.url = sqlite:///{db}\n");
        std::fs::write(&ini, text)?;
        Ok(ini)
    }
}

/// Installs Alembic in a virtualenv (once) and writes a project whose four revisions mirror ours.
fn alembic(sh: &Shell, dir: &Path) -> anyhow::Result<Alembic> {
    let venv = work_dir().join("venv");
    let program = venv.join("bin/alembic");
    if !program.exists() {
        eprintln!("installing Alembic from PyPI into {}", venv.display());
        let create = cmd!(sh, "python3 -m venv {venv}");
        process::run(create, "creating the Python environment")?;
        let pip = venv.join("bin/pip");
        let install = cmd!(sh, "{pip} install --quiet alembic");
        process::run(install, "installing Alembic")?;
    }
    let python = venv.join("bin/python");
    let code = "import alembic, sqlalchemy; print('alembic', alembic.__version__ + ', SQLAlchemy', sqlalchemy.__version__)";
    let out = process::run(cmd!(sh, "{python} -c {code}"), "reading Alembic's version")?;
    let versions = out.stdout.trim().to_owned();
    let scripts = dir.join("alembic/env");
    let revisions = scripts.join("versions");
    std::fs::create_dir_all(&revisions)?;
    std::fs::write(
        scripts.join("env.py"),
        "from alembic import context\nfrom sqlalchemy import engine_from_config, pool\n\nconfig = context.config\nengine = engine_from_config(config.get_section(config.config_ini_section), prefix='sqlalchemy.', poolclass=pool.NullPool)\nwith engine.connect() as connection:\n    context.configure(connection=connection, target_metadata=None)\n    with context.begin_transaction():\n        context.run_migrations()\n",
    )?;
    for k in 1..=4u32 {
        let m = migrations::migration(k).with_context(|| format!("no migration {k}"))?;
        let down = (k > 1).then(|| format!("'r{:04}'", k - 1));
        let down = down.unwrap_or_else(|| "None".into());
        std::fs::write(
            revisions.join(format!("r{k:04}.py")),
            format!(
                "from alembic import op\n\nrevision = 'r{k:04}'\ndown_revision = {down}\nbranch_labels = None\ndepends_on = None\n\nSQL = {:?}\n\ndef upgrade():\n    for statement in SQL.split(';'):\n        if statement.strip():\n            op.execute(statement)\n\ndef downgrade():\n    pass\n",
                m.up
            ),
        )?;
    }
    Ok(Alembic {
        program,
        scripts,
        versions,
    })
}
