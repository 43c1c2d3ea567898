//! What `bot db <command> --json` prints: one object on stdout, on success and on failure. The
//! bot serializes these types and the deploy tool (`xtask`) deserializes them: both sides read
//! one definition. Fields added after a release carry `#[serde(default)]`, so that an older
//! image's output still reads.
//!
//! On failure every command prints an [`ErrorReport`] `{"error", "exit_code", "database",
//! "recovered"}` and exits with its [`ExitCode`]. Every object of a command that reads the
//! database gets `"recovered"`: `"journal"` (a hot journal was rolled back) or `"wal"` (a WAL no
//! process had open was folded in), a [`Recovery`]; the key is absent when nothing was
//! recovered. On success:
//!
//! | command | object |
//! | --- | --- |
//! | `status` | a [`StatusReport`]: the [`Status`] `{"state","version","head","pending","matches","closest","difference","foreign","edited","forced","extra_tables"}` plus `"database","bytes","wal_bytes","exists","zero_bytes"` (`zero_bytes`: the file exists and is 0 bytes, state `empty`) |
//! | `check` | a [`CheckReport`]: the [`Status`] plus `"database"` and `"ok": true` |
//! | `upgrade` | an [`UpgradeReport`]: an [`Upgrade`] `{"from","to","applied"}` plus `"state_before"`, `"adopted"` (with `--adopt`), `"backup"` (a [`BackupInfo`], with `--backup-to`) and `"zero_bytes"` (the schema was built into a 0-byte file) |
//! | `upgrade --dry-run`, `downgrade --dry-run` | a [`PlanReport`]: a [`Plan`] `{"from","to","steps":[{"version","file","sql"}]}` plus `"dry_run": true` |
//! | `downgrade` | an [`Upgrade`]; `applied` lists the revisions undone |
//! | `stamp` | a [`StampReport`] `{"stamped": N, "forced": bool, "difference"}` (`forced`: recorded as forced, the schema differed); with `--dry-run` a [`StampPlanReport`] `{"dry_run": true, "stamp": N, "how", "difference"}` |
//! | `adopt` | an [`AdoptReport`] `{"adopted": N}`; with `--dry-run` an [`AdoptPlanReport`] `{"dry_run": true, "adopt": N}` |
//! | `history` | a [`HistoryReport`] `{"database", "history": [`[`HistoryRow`]`]}` |
//! | `schema` | a [`SchemaReport`] `{"at": N or null, "schema": `[`Schema`]`}` |
//! | `diff --to N` | a [`DiffReport`]: a [`DiffScript`] `{"to","recorded","statements":[{"kind","object","sql","safe","commented","comment"}],"differences","remaining","script"}` plus `"database"` (`kind`: [`StatementKind`], e.g. `add_column`, `rebuild_table`, `drop_view`, `manual` (words only, `sql` null); `safe`: keeps every row and value; `remaining`: what still differs after the script as printed) |
//! | `baseline FILE` | a [`BaselineReport`]: a [`Baseline`] `{"source","statements","left_out","sql"}` plus `"output"` (the file written, or null) |
//! | `backup` | a [`BackupInfo`] `{"path","revision","state","bytes"}` |
//! | `restore` | a [`RestoreReport`]: a [`Restored`] (the [`BackupInfo`] of the file restored plus `"replaced"`, where the database it replaced is kept, or null when it had no tables, and `"rows"`, a [`RowCounts`]: rows per table of the replaced and of the restored content, or null) plus `"damaged"` (where a damaged live database was set aside, with `--replace-damaged`) |
//! | `fix-ownership` | an [`OwnershipReport`] `{"owner","check","wrong":[{"path","uid","gid"}],"fixed"}` |
//! | `find-databases` | a [`Search`] `{"databases":[{"path","bytes","journal","wal"}],"searched","missing"}` |
//! | `import` | an [`ImportReport`] `{"source","bytes","recovered","users","tables","status","target","check_only"}` (`status`: a [`StatusReport`] of the copy) |
//!
//! A [`State`] is its name in lower case (`"unstamped"`), a [`Recovery`] too (`"journal"`), an
//! [`ExitCode`] its number. The keys of an object are printed in alphabetical order.
//!
//! For example, the old app's database, before `adopt` (some keys left out):
//!
//! ```json
//! {"closest":null,"difference":[],"edited":[],"foreign":null,"head":4,"matches":1,"pending":[2,3,4],"state":"unstamped","version":null}
//! ```

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

use crate::schema::Schema;
use crate::{
    BackupInfo, Baseline, DiffScript, HistoryRow, Plan, Recovery, Restored, State, Status, Upgrade,
};
#[cfg(doc)]
use crate::{RowCounts, StatementKind};

/// How `bot db` exits: the number in [`ErrorReport::exit_code`] too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
#[repr(u8)]
pub enum ExitCode {
    /// Done.
    Ok = 0,
    /// The command failed while working; what it did was rolled back (and `diff --exit-code`
    /// found a difference).
    Failed = 1,
    /// A setting or an argument is wrong.
    Usage = 2,
    /// Refused because of the database's state or place; nothing was changed (e.g. a missing
    /// or read-only folder, a hot journal this user cannot roll back).
    Refused = 3,
    /// The file is not a SQLite database (a folder, another kind of file, a FIFO, a device),
    /// or is damaged (cut short, failing `quick_check`, or for `check` `integrity_check`).
    BadFile = 4,
    /// The database stayed locked by another process (the message says whether by a writer
    /// or by a reader).
    Busy = 5,
}

impl ExitCode {
    /// Its number.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ExitCode> for u8 {
    fn from(code: ExitCode) -> u8 {
        code.code()
    }
}

impl TryFrom<u8> for ExitCode {
    type Error = UnknownExitCode;

    fn try_from(code: u8) -> Result<ExitCode, UnknownExitCode> {
        Ok(match code {
            0 => ExitCode::Ok,
            1 => ExitCode::Failed,
            2 => ExitCode::Usage,
            3 => ExitCode::Refused,
            4 => ExitCode::BadFile,
            5 => ExitCode::Busy,
            other => return Err(UnknownExitCode(other)),
        })
    }
}

/// A number `bot db` never exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownExitCode(pub u8);

impl fmt::Display for UnknownExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not an exit code of `bot db`", self.0)
    }
}

impl std::error::Error for UnknownExitCode {}

/// What every command prints when it fails.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The message, with its remedy.
    pub error: String,
    /// How the command exits.
    pub exit_code: ExitCode,
    /// DATABASE_PATH, absolute.
    #[serde(default)]
    pub database: String,
    /// What was recovered before the command failed.
    #[serde(default)]
    pub recovered: Option<Recovery>,
}

/// `status`: the [`Status`] and the file's sizes. Reads as its [`Status`] (`report.state`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// The state.
    #[serde(flatten)]
    pub status: Status,
    /// The database, absolute.
    #[serde(default)]
    pub database: String,
    /// Its size (0 when there is no file).
    #[serde(default)]
    pub bytes: u64,
    /// The size of the `-wal` beside it: committed pages a copy carries too.
    #[serde(default)]
    pub wal_bytes: u64,
    /// Whether the file exists.
    #[serde(default)]
    pub exists: bool,
    /// The file exists and is 0 bytes (state `empty`): maybe a failed copy.
    #[serde(default)]
    pub zero_bytes: bool,
}

impl StatusReport {
    /// What `status` reports where there is no database yet, for a build whose head is `head`.
    pub fn empty(head: u32) -> StatusReport {
        StatusReport {
            status: Status::empty(head),
            ..StatusReport::default()
        }
    }

    /// What a copy of the database takes: the file and the committed pages in its `-wal`.
    pub fn copy_bytes(&self) -> u64 {
        self.bytes + self.wal_bytes
    }
}

impl Deref for StatusReport {
    type Target = Status;

    fn deref(&self) -> &Status {
        &self.status
    }
}

impl DerefMut for StatusReport {
    fn deref_mut(&mut self) -> &mut Status {
        &mut self.status
    }
}

/// `check`: the [`Status`] of a database that passed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    /// The state.
    #[serde(flatten)]
    pub status: Status,
    /// The database, absolute.
    pub database: String,
    /// Always true (a failed check prints an [`ErrorReport`]).
    pub ok: bool,
}

/// `upgrade`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeReport {
    /// What it did.
    #[serde(flatten)]
    pub upgrade: Upgrade,
    /// The state before.
    pub state_before: State,
    /// The revision adopted first (`--adopt`), if any.
    #[serde(default)]
    pub adopted: Option<u32>,
    /// The backup taken first (`--backup-to`), checked.
    #[serde(default)]
    pub backup: Option<BackupInfo>,
    /// The schema was built into a 0-byte file.
    #[serde(default)]
    pub zero_bytes: bool,
}

/// `upgrade --dry-run`, `downgrade --dry-run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanReport {
    /// What would run.
    #[serde(flatten)]
    pub plan: Plan,
    /// Always true.
    pub dry_run: bool,
}

/// `stamp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StampReport {
    /// The revision recorded.
    pub stamped: u32,
    /// Recorded as forced: the schema differed.
    pub forced: bool,
    /// How the schema differed.
    pub difference: Vec<String>,
}

/// `stamp --dry-run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StampPlanReport {
    /// Always true.
    pub dry_run: bool,
    /// The revision it would record.
    pub stamp: u32,
    /// `stamped`, or `forced` when the schema differs.
    pub how: String,
    /// How the schema differs.
    pub difference: Vec<String>,
}

/// `adopt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptReport {
    /// The revision recorded.
    pub adopted: u32,
}

/// `adopt --dry-run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptPlanReport {
    /// Always true.
    pub dry_run: bool,
    /// The revision it would record.
    pub adopt: u32,
}

/// `history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryReport {
    /// The database, absolute.
    pub database: String,
    /// Its rows, oldest first.
    pub history: Vec<HistoryRow>,
}

/// `schema`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaReport {
    /// The revision whose schema this is; `None`: the live database's.
    pub at: Option<u32>,
    /// The normalized schema.
    pub schema: Schema,
}

/// `diff --to N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffReport {
    /// The script.
    #[serde(flatten)]
    pub diff: DiffScript,
    /// The database, absolute.
    pub database: String,
}

/// `baseline FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineReport {
    /// The first migration.
    #[serde(flatten)]
    pub baseline: Baseline,
    /// The file written (`--output`), if any.
    pub output: Option<String>,
}

/// `restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreReport {
    /// What was restored, and where the replaced database is kept.
    #[serde(flatten)]
    pub restored: Restored,
    /// Where the damaged live database was set aside (`--replace-damaged`), if it was.
    #[serde(default)]
    pub damaged: Option<String>,
}

/// `fix-ownership`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnershipReport {
    /// The owner asked for, `UID:GID`.
    pub owner: String,
    /// Only reported (`--check`).
    pub check: bool,
    /// The files and the folder that belonged to someone else.
    pub wrong: Vec<WrongOwner>,
    /// They were given to the owner.
    pub fixed: bool,
}

/// A file that belonged to someone else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrongOwner {
    /// The file or folder.
    pub path: String,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// A SQLite database found by its header (`find-databases`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoundDatabase {
    /// The file, as reached from the path searched.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// A non-empty `-journal` lies beside it (a writer was killed mid-transaction, or still runs).
    #[serde(default)]
    pub journal: bool,
    /// A `-wal` lies beside it (WAL mode, open now or not closed cleanly).
    #[serde(default)]
    pub wal: bool,
}

/// What `find-databases` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Search {
    /// The databases: the paths in the order given, files within a folder sorted by path.
    pub databases: Vec<FoundDatabase>,
    /// The paths that exist and were searched.
    #[serde(default)]
    pub searched: Vec<String>,
    /// The paths that do not exist.
    #[serde(default)]
    pub missing: Vec<String>,
}

/// `import`, or with `--check-only` what it would do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    /// The old database.
    #[serde(default)]
    pub source: String,
    /// The size of the copy.
    #[serde(default)]
    pub bytes: u64,
    /// How the source was recovered (in a staged copy), if it had to be.
    #[serde(default)]
    pub recovered: Option<Recovery>,
    /// Rows in `users`, when there is such a table.
    #[serde(default)]
    pub users: Option<i64>,
    /// The copy's tables, without `sqlite_*` and migration history tables.
    #[serde(default)]
    pub tables: Vec<String>,
    /// The copy's state.
    pub status: StatusReport,
    /// Where the copy now is; `None` with `--check-only`.
    #[serde(default)]
    pub target: Option<String>,
    /// Nothing was written (`--check-only`).
    #[serde(default)]
    pub check_only: bool,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        EditedFile, ForeignHistory, PlannedStep, RowCounts, ScriptStatement, StatementKind,
        schema_at,
    };

    /// Serializes `value`, reads it back as `T` and serializes that: the same JSON.
    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> Value {
        let json = serde_json::to_value(value).unwrap();
        let back: T =
            serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        json
    }

    fn status() -> Status {
        Status {
            state: State::Modified,
            version: Some(2),
            head: 4,
            pending: vec![3, 4],
            matches: Some(1),
            closest: Some(2),
            difference: vec!["table users: column x missing".into()],
            foreign: Some(ForeignHistory {
                tool: "alembic".into(),
                table: "alembic_version".into(),
                revision: Some("ae10".into()),
            }),
            edited: vec![EditedFile {
                file: "0001_initial.up.sql".into(),
                recorded: "aa".into(),
                current: "bb".into(),
            }],
            forced: Some(1),
            extra_tables: vec!["old".into()],
        }
    }

    fn status_report() -> StatusReport {
        StatusReport {
            status: status(),
            database: "/data/bot.db".into(),
            bytes: 4096,
            wal_bytes: 8,
            exists: true,
            zero_bytes: false,
        }
    }

    fn backup_info() -> BackupInfo {
        BackupInfo {
            path: PathBuf::from("/backup/b.db"),
            revision: Some(4),
            state: State::Current,
            bytes: 4096,
        }
    }

    #[test]
    fn every_type_round_trips() {
        let upgrade = Upgrade {
            from: Some(1),
            to: 4,
            applied: vec![2, 3, 4],
        };
        round_trip(&ErrorReport {
            error: "no".into(),
            exit_code: ExitCode::BadFile,
            database: "/data/bot.db".into(),
            recovered: Some(Recovery::Wal),
        });
        round_trip(&status_report());
        round_trip(&CheckReport {
            status: status(),
            database: "/data/bot.db".into(),
            ok: true,
        });
        round_trip(&UpgradeReport {
            upgrade: upgrade.clone(),
            state_before: State::Unstamped,
            adopted: Some(1),
            backup: Some(backup_info()),
            zero_bytes: false,
        });
        round_trip(&upgrade);
        round_trip(&PlanReport {
            plan: Plan {
                from: None,
                to: 1,
                steps: vec![PlannedStep {
                    version: 1,
                    file: "0001_initial.up.sql".into(),
                    sql: "CREATE TABLE t (id INTEGER);".into(),
                }],
            },
            dry_run: true,
        });
        round_trip(&StampReport {
            stamped: 2,
            forced: true,
            difference: vec!["x".into()],
        });
        round_trip(&StampPlanReport {
            dry_run: true,
            stamp: 2,
            how: "forced".into(),
            difference: vec!["x".into()],
        });
        round_trip(&AdoptReport { adopted: 1 });
        round_trip(&AdoptPlanReport {
            dry_run: true,
            adopt: 1,
        });
        round_trip(&HistoryReport {
            database: "/data/bot.db".into(),
            history: vec![HistoryRow {
                version: 1,
                name: "initial".into(),
                checksum: "aa".into(),
                applied_at: "2024-01-01T00:00:00Z".into(),
                how: "applied".into(),
            }],
        });
        round_trip(&SchemaReport {
            at: Some(1),
            schema: schema_at(1).clone(),
        });
        round_trip(&DiffReport {
            diff: DiffScript {
                to: 4,
                recorded: None,
                statements: vec![ScriptStatement {
                    kind: StatementKind::RebuildTable,
                    object: "users".into(),
                    sql: Some("...".into()),
                    safe: false,
                    commented: true,
                    comment: "loses data".into(),
                }],
                differences: vec!["a".into()],
                remaining: vec!["b".into()],
                script: "-- script".into(),
            },
            database: "/data/bot.db".into(),
        });
        round_trip(&BaselineReport {
            baseline: Baseline {
                source: PathBuf::from("/old.db"),
                statements: vec!["CREATE TABLE t (id INTEGER);".into()],
                left_out: vec!["alembic_version".into()],
                sql: "CREATE TABLE t (id INTEGER);\n".into(),
            },
            output: Some("/tmp/0001_baseline.up.sql".into()),
        });
        round_trip(&backup_info());
        round_trip(&RestoreReport {
            restored: Restored {
                info: backup_info(),
                replaced: Some(PathBuf::from("/data/bot.db.replaced-x")),
                rows: Some(RowCounts {
                    replaced: BTreeMap::from([("users".into(), 3)]),
                    restored: BTreeMap::from([("users".into(), 2)]),
                }),
            },
            damaged: Some("/data/bot.db.damaged-x".into()),
        });
        round_trip(&OwnershipReport {
            owner: "10001:10001".into(),
            check: true,
            wrong: vec![WrongOwner {
                path: "/data".into(),
                uid: 0,
                gid: 0,
            }],
            fixed: false,
        });
        round_trip(&Search {
            databases: vec![FoundDatabase {
                path: "/old/app.db".into(),
                bytes: 4096,
                journal: true,
                wal: false,
            }],
            searched: vec!["/old".into()],
            missing: vec!["/none".into()],
        });
        round_trip(&ImportReport {
            source: "/old/app.db".into(),
            bytes: 4096,
            recovered: Some(Recovery::Journal),
            users: Some(3),
            tables: vec!["users".into()],
            status: status_report(),
            target: None,
            check_only: true,
        });
    }

    #[test]
    fn names_and_numbers_are_as_scripts_see_them() {
        for state in [
            State::Empty,
            State::Unstamped,
            State::Foreign,
            State::Behind,
            State::Current,
            State::Ahead,
            State::Modified,
            State::Drifted,
        ] {
            assert_eq!(round_trip(&state), json!(state.name()));
            assert_eq!(state.to_string(), state.name());
        }
        assert_eq!(round_trip(&Recovery::Journal), json!("journal"));
        assert_eq!(Recovery::Wal.to_string(), "wal");
        for code in 0..=5u8 {
            let exit = ExitCode::try_from(code).unwrap();
            assert_eq!(round_trip(&exit), json!(code));
        }
        assert!(serde_json::from_value::<ExitCode>(json!(6)).is_err());
    }

    #[test]
    fn a_status_reads_as_its_status_and_without_the_fields_added_later() {
        let report = round_trip(&status_report());
        assert_eq!(report["state"], "modified");
        assert_eq!(report["wal_bytes"], 8);
        let old: StatusReport = serde_json::from_value(json!({
            "state": "behind", "version": 3, "head": 4, "pending": [4],
            "matches": null, "closest": null,
        }))
        .unwrap();
        assert_eq!(old.state, State::Behind);
        assert_eq!(old.copy_bytes(), 0);
        assert!(old.difference.is_empty());
    }
}
