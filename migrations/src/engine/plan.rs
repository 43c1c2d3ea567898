//! What a command would do to a database in a given state, or why it refuses: decided from
//! the state read and the catalog, with no I/O.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::status::differences_to;
use super::{Error, State, Status};
use crate::catalog::Catalog;
use crate::schema::Schema;

/// What `upgrade` or `downgrade` did: the revision before (`from`) and after (`to`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upgrade {
    pub from: Option<u32>,
    pub to: u32,
    /// Revisions this process applied (or undid), in order; another process may have done
    /// some meanwhile.
    pub applied: Vec<u32>,
}

/// One step a plan would run: the revision concerned, its SQL file and the SQL, as it would run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedStep {
    pub version: u32,
    pub file: Cow<'static, str>,
    pub sql: Cow<'static, str>,
}

/// What `upgrade` or `downgrade` would do, for `--dry-run`: the revision now (`from`), the
/// revision after (`to`) and the steps, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub from: Option<u32>,
    pub to: u32,
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    /// Every migration of `catalog` after revision `from` (none: from the start) up to its head.
    pub fn after(catalog: &Catalog, from: Option<u32>) -> Plan {
        Plan {
            from,
            to: catalog.head(),
            steps: catalog.migrations()[from.unwrap_or(0) as usize..]
                .iter()
                .map(|m| PlannedStep {
                    version: m.version,
                    file: m.file.into(),
                    sql: m.up.into(),
                })
                .collect(),
        }
    }
}

/// Refuses a revision `catalog` does not have (0 is none).
pub(crate) fn known_revision(catalog: &Catalog, version: u32) -> Result<(), Error> {
    if version == 0 || version > catalog.head() {
        return Err(Error::UnknownRevision {
            version,
            head: catalog.head(),
        });
    }
    Ok(())
}

/// Refuses a history the catalog cannot vouch for: one ahead of it, or one whose applied files
/// were edited since.
fn refuse_unknown_history(status: &Status) -> Result<(), Error> {
    match status.state {
        State::Ahead => Err(Error::Ahead {
            version: status.version.unwrap_or_default(),
            head: status.head,
        }),
        State::Modified => Err(Error::Modified {
            edited: status.edited.clone(),
        }),
        _ => Ok(()),
    }
}

/// The state, or the refusal for states where no migration may run: ahead, modified,
/// drifted, and no history of ours (unstamped, foreign).
pub(super) fn migratable(status: Status) -> Result<Status, Error> {
    refuse_unknown_history(&status)?;
    match status.state {
        State::Drifted => Err(Error::Drifted {
            version: status.version.unwrap_or_default(),
            difference: status.difference,
            forced: status.forced,
            extra_tables: status.extra_tables,
        }),
        State::Unstamped | State::Foreign => Err(Error::Unstamped {
            foreign: status.foreign,
        }),
        _ => Ok(status),
    }
}

/// [`Database::plan_downgrade`](super::Database::plan_downgrade) on a database in `status`.
pub(super) fn downgrade(catalog: &Catalog, status: Status, to: u32) -> Result<Plan, Error> {
    let status = migratable(status)?;
    let at = status.version.unwrap_or(0);
    if to > at {
        return Err(Error::WrongDirection { at, to });
    }
    let steps = (to + 1..=at)
        .rev()
        .map(|version| {
            let m = catalog
                .migration(version)
                .expect("recorded revisions are known");
            match (m.down_file, m.down) {
                (Some(file), Some(sql)) => Ok(PlannedStep {
                    version,
                    file: file.into(),
                    sql: sql.into(),
                }),
                _ => Err(Error::NoDown {
                    version,
                    file: m.file,
                }),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Plan {
        from: status.version,
        to,
        steps,
    })
}

/// [`Database::check_stamp`](super::Database::check_stamp) on a database in `status` whose
/// live schema is `live`, `version` being a revision of `catalog`.
pub(super) fn stamp(
    catalog: &Catalog,
    status: &Status,
    live: &Schema,
    version: u32,
    force: bool,
) -> Result<Vec<String>, Error> {
    refuse_unknown_history(status)?;
    let difference = differences_to(catalog, live, version);
    if !difference.is_empty() && !force {
        return Err(Error::StampMismatch {
            version,
            difference,
        });
    }
    Ok(difference)
}

/// [`Database::plan_adopt`](super::Database::plan_adopt) on a database in `status`.
pub(super) fn adopt(status: &Status) -> Result<u32, Error> {
    if !matches!(status.state, State::Unstamped | State::Foreign) {
        return Err(Error::AlreadyStamped {
            state: status.state,
        });
    }
    status.matches.ok_or_else(|| Error::NoMatch {
        closest: status.closest.unwrap_or(0),
        difference: status.difference.clone(),
        extra_tables: status.extra_tables.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::status::decide;
    use super::super::status::tests::{applied, catalog};
    use super::*;

    /// The state of a database whose history applied `versions`, with the schema of `at`.
    fn status(versions: &[u32], at: u32) -> Status {
        decide(&applied(versions), catalog().schema_at(at), None, catalog())
    }

    #[test]
    fn an_upgrade_plans_every_migration_after_the_recorded_one() {
        let plan = Plan::after(catalog(), Some(1));
        assert_eq!((plan.from, plan.to), (Some(1), 2));
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].file, "0002_pinned.up.sql");
    }

    #[test]
    fn a_downgrade_stops_at_a_revision_without_a_down_file() {
        let at_2 = status(&[1, 2], 2);
        let plan = downgrade(catalog(), at_2.clone(), 1).unwrap();
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(plan.steps[0].file, "0002_pinned.down.sql");
        let no_down = downgrade(catalog(), at_2.clone(), 0).unwrap_err();
        assert!(matches!(no_down, Error::NoDown { version: 1, .. }));
        let up = downgrade(catalog(), status(&[1], 1), 2).unwrap_err();
        assert!(matches!(up, Error::WrongDirection { at: 1, to: 2 }));
    }

    #[test]
    fn nothing_migrates_a_database_without_a_history_of_ours_or_with_a_wrong_one() {
        let unstamped = migratable(status(&[], 1)).unwrap_err();
        assert!(matches!(unstamped, Error::Unstamped { .. }));
        let drifted = migratable(status(&[1], 2)).unwrap_err();
        assert!(matches!(drifted, Error::Drifted { version: 1, .. }));
        let e = migratable(status(&[1, 2, 3], 2)).unwrap_err();
        assert_eq!(format!("{e:?}"), "Ahead { version: 3, head: 2 }");
        assert!(migratable(status(&[1], 1)).is_ok());
    }

    #[test]
    fn a_stamp_needs_the_revisions_schema_unless_forced() {
        let unstamped = status(&[], 1);
        let live = catalog().schema_at(1);
        let stamp_at = |version, force| stamp(catalog(), &unstamped, live, version, force);
        assert_eq!(stamp_at(1, false).unwrap(), Vec::<String>::new());
        let mismatch = stamp_at(2, false).unwrap_err();
        assert!(matches!(mismatch, Error::StampMismatch { version: 2, .. }));
        assert_eq!(stamp_at(2, true).unwrap().len(), 1);
        let e = known_revision(catalog(), 3).unwrap_err();
        assert_eq!(format!("{e:?}"), "UnknownRevision { version: 3, head: 2 }");
        assert_eq!(adopt(&unstamped).unwrap(), 1);
        let e = adopt(&status(&[1], 1)).unwrap_err();
        assert_eq!(format!("{e:?}"), "AlreadyStamped { state: Behind }");
    }
}
