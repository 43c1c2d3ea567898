//! The migration engine against the tools people use: `bot db status` against `alembic current`
//! on the same file, the `users` rebuild against the `sqlite3` shell running the same SQL, and
//! `adopt` on a 1 GB database.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use super::{Measurement, Section, bot_binary, median, show, time, work_dir};
use crate::process;
use crate::project;

const REBUILD_USERS: u64 = 1_000_000;
const ADOPT_BYTES: u64 = 1 << 30;

/// Runs the engine benchmarks.
pub fn run(sh: &Shell) -> anyhow::Result<Section> {
    let bot = bot_binary(sh)?;
    let sqlite3 = sqlite3(sh)?;
    let dir = work_dir().join("engine");
    std::fs::create_dir_all(&dir)?;
    let mut rows = Vec::new();
    rows.extend(status_against_alembic(sh, &bot, &sqlite3, &dir)?);
    rows.extend(rebuild_against_sqlite3(&bot, &sqlite3, &dir)?);
    rows.push(adopt_on_a_large_file(&bot, &sqlite3, &dir)?);
    Ok(Section {
        title: "Migration engine".into(),
        method: format!(
            "Each command is a whole process, timed from spawn to exit; the median of several runs. `bot` is the static release binary the image ships. Alembic is installed from PyPI into `target/bench/venv` by the benchmark; `sqlite3` is the system's shell ({}).",
            process::run(cmd!(sh, "{sqlite3} --version"), "sqlite3 --version")?
                .stdout
                .split_whitespace()
                .next()
                .unwrap_or("?")
        ),
        rows,
    })
}

/// The `sqlite3` shell, installed from the distribution when missing.
fn sqlite3(sh: &Shell) -> anyhow::Result<PathBuf> {
    if let Ok(out) = cmd!(sh, "which sqlite3").quiet().ignore_status().output()
        && out.status.success()
    {
        return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    eprintln!("installing sqlite3 (apt-get) for the floor measurement");
    process::run(cmd!(sh, "apt-get install -y sqlite3"), "installing sqlite3")?;
    Ok(PathBuf::from("/usr/bin/sqlite3"))
}

fn sql(sqlite3: &Path, db: &Path, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new(sqlite3)
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().expect("piped"), script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() || !output.stderr.is_empty() {
        bail!(
            "sqlite3 {}: {}",
            db.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn bot_db(bot: &Path, db: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let mut all = vec!["db"];
    all.extend_from_slice(args);
    time(bot, &all, &[("DATABASE_PATH", db)])
}

fn fresh(db: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

fn status_against_alembic(
    sh: &Shell,
    bot: &Path,
    sqlite3: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<Measurement>> {
    let db = dir.join("current.db");
    fresh(&db);
    bot_db(bot, &db, &["upgrade"])?;
    sql(
        sqlite3,
        &db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
         INSERT INTO users (telegram_id, username, first_name) SELECT i, 'user' || i, 'Name' FROM n;
         CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
         INSERT INTO alembic_version VALUES ('r0004');",
    )?;
    let alembic = alembic(sh, dir, &db)?;
    let ours = median(
        (0..31)
            .map(|_| bot_db(bot, &db, &["status", "--json"]))
            .collect::<anyhow::Result<_>>()?,
    );
    let ini = dir.join("alembic/alembic.ini");
    let theirs = median(
        (0..7)
            .map(|_| {
                time(
                    &alembic,
                    &["-c", ini.to_str().expect("UTF-8 path"), "current"],
                    &[],
                )
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let ratio = theirs.as_secs_f64() / ours.as_secs_f64();
    Ok(vec![
        Measurement {
            name: "`bot db status` on a current database (10,000 users)".into(),
            ours: show(ours),
            baseline: format!("`alembic current`: {}", show(theirs)),
            target: "under 20 ms".into(),
            met: ours < Duration::from_millis(20),
        },
        Measurement {
            name: "`bot db status` against `alembic current`".into(),
            ours: format!("{ratio:.0}x faster"),
            baseline: "same file".into(),
            target: "at least 20x faster".into(),
            met: ratio >= 20.0,
        },
    ])
}

/// Installs Alembic in a virtual environment and writes an Alembic project whose four revisions
/// mirror ours, pointed at `db`. Returns the `alembic` program.
fn alembic(sh: &Shell, dir: &Path, db: &Path) -> anyhow::Result<PathBuf> {
    let venv = work_dir().join("venv");
    let program = venv.join("bin/alembic");
    if !program.exists() {
        eprintln!("installing Alembic from PyPI into {}", venv.display());
        process::run(
            cmd!(sh, "python3 -m venv {venv}"),
            "creating the Python environment",
        )?;
        let pip = venv.join("bin/pip");
        process::run(
            cmd!(sh, "{pip} install --quiet alembic"),
            "installing Alembic",
        )?;
    }
    let project = dir.join("alembic");
    let versions = project.join("env/versions");
    std::fs::create_dir_all(&versions)?;
    std::fs::write(
        project.join("alembic.ini"),
        format!(
            "[alembic]\nscript_location = {}\nsqlalchemy.url = sqlite:///{}\n",
            project.join("env").display(),
            db.display()
        ),
    )?;
    std::fs::write(
        project.join("env/env.py"),
        "from alembic import context\nfrom sqlalchemy import engine_from_config, pool\n\nconfig = context.config\nengine = engine_from_config(config.get_section(config.config_ini_section), prefix='sqlalchemy.', poolclass=pool.NullPool)\nwith engine.connect() as connection:\n    context.configure(connection=connection, target_metadata=None)\n    with context.begin_transaction():\n        context.run_migrations()\n",
    )?;
    let sql_dir = project::root().join("migrations/sql");
    for k in 1..=4u32 {
        let up = std::fs::read_dir(&sql_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{k:04}_")) && n.ends_with(".up.sql"))
            })
            .with_context(|| format!("no migration {k}"))?;
        let down = if k == 1 {
            "None".to_owned()
        } else {
            format!("'r{:04}'", k - 1)
        };
        std::fs::write(
            versions.join(format!("r{k:04}.py")),
            format!(
                "from alembic import op\n\nrevision = 'r{k:04}'\ndown_revision = {down}\nbranch_labels = None\ndepends_on = None\n\nSQL = {:?}\n\ndef upgrade():\n    for statement in SQL.split(';'):\n        if statement.strip():\n            op.execute(statement)\n\ndef downgrade():\n    pass\n",
                std::fs::read_to_string(&up)?
            ),
        )?;
    }
    Ok(program)
}

fn rebuild_against_sqlite3(
    bot: &Path,
    sqlite3: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<Measurement>> {
    let template = dir.join("rebuild-template.db");
    if !template.exists() {
        eprintln!("creating a database of {REBUILD_USERS} users at revision 3");
        let partial = dir.join("rebuild-template.partial.db");
        fresh(&partial);
        bot_db(bot, &partial, &["upgrade"])?;
        bot_db(bot, &partial, &["downgrade", "--to", "3"])?;
        sql(
            sqlite3,
            &partial,
            &format!(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {REBUILD_USERS})
                 INSERT INTO users (telegram_id, username, first_name, last_name, is_admin, language_code, last_seen_at)
                 SELECT 100000000 + i, 'user' || i, 'First' || i, 'Last' || i, i % 100 = 0, 'en', datetime('now') FROM n;
                 INSERT INTO command_log (user_id, command) SELECT id, '/start' FROM users WHERE id % 4 = 0;"
            ),
        )?;
        std::fs::rename(&partial, &template)?;
    }
    let up =
        std::fs::read_to_string(project::root().join("migrations/sql/0004_users_rebuild.up.sql"))?;
    // The floor: the same SQL in the same transaction, with the same foreign key handling.
    let floor_sql = format!(
        "PRAGMA foreign_keys = OFF;\nBEGIN IMMEDIATE;\n{up}\nPRAGMA foreign_key_check;\nINSERT INTO schema_history (version, name, checksum, how) VALUES (4, 'users_rebuild', 'x', 'applied');\nCOMMIT;\n"
    );
    let copy = dir.join("rebuild.db");
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        fresh(&copy);
        std::fs::copy(&template, &copy)?;
        ours.push(bot_db(bot, &copy, &["upgrade"])?);
        fresh(&copy);
        std::fs::copy(&template, &copy)?;
        let started = Instant::now();
        sql(sqlite3, &copy, &floor_sql)?;
        floor.push(started.elapsed());
    }
    fresh(&copy);
    let (ours, floor) = (median(ours), median(floor));
    let ratio = ours.as_secs_f64() / floor.as_secs_f64();
    Ok(vec![Measurement {
        name: format!("`users` rebuild (revision 4) on {REBUILD_USERS} users, `bot db upgrade`"),
        ours: format!("{} ({ratio:.2}x the floor)", show(ours)),
        baseline: format!("`sqlite3` running the same SQL: {}", show(floor)),
        target: "within 1.2x".into(),
        met: ratio <= 1.2,
    }])
}

fn adopt_on_a_large_file(bot: &Path, sqlite3: &Path, dir: &Path) -> anyhow::Result<Measurement> {
    let db = dir.join("large.db");
    if std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) < ADOPT_BYTES {
        eprintln!("creating a 1 GB database of the old app's schema");
        fresh(&db);
        let rows = ADOPT_BYTES / 280;
        sql(
            sqlite3,
            &db,
            &format!(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
                 {}
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
                 INSERT INTO users (telegram_id, username, first_name, last_name, is_admin)
                 SELECT i, 'user' || i, hex(randomblob(60)), hex(randomblob(60)), i % 100 = 0 FROM n;",
                std::fs::read_to_string(project::root().join("migrations/sql/0001_initial.up.sql"))?
            ),
        )?;
    }
    let bytes = std::fs::metadata(&db)?.len();
    let mut samples = Vec::new();
    for _ in 0..9 {
        sql(sqlite3, &db, "DROP TABLE IF EXISTS schema_history;")?;
        samples.push(bot_db(bot, &db, &["adopt"])?);
    }
    sql(sqlite3, &db, "DROP TABLE IF EXISTS schema_history;")?;
    let ours = median(samples);
    Ok(Measurement {
        name: format!(
            "`bot db adopt` on a {:.2} GB database",
            bytes as f64 / f64::from(1u32 << 30)
        ),
        ours: show(ours),
        baseline: String::new(),
        target: "under 100 ms".into(),
        met: ours < Duration::from_millis(100),
    })
}
