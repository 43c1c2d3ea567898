//! The rollback after a failed step: the new bot stops, the pre-deploy backup comes back (what
//! the new bot wrote is set aside, never dropped), and the previous image starts again with the
//! environment it had, under the project's tag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use migrations::RowCounts;
use xshell::cmd;

use crate::backups;
use crate::compose::Stack;
use crate::database;
use crate::docker::ContainerState;
use crate::journal;
use crate::process;

use super::{Changes, Deploy, shared::*, short};

impl Deploy<'_> {
    /// Stops the new bot, puts back the pre-deploy database and starts the previous bot.
    /// Returns what was set aside when the database put back replaced rows the new bot wrote
    /// (said in the error, so that it is never lost silently).
    pub(super) fn roll_back(
        &self,
        stack: &Stack,
        changes: &Changes,
        previous: &Previous,
    ) -> anyhow::Result<Option<String>> {
        let (sh, run) = (self.sh, self.run);
        if let Some(container) = stack.bot_container(sh)?.filter(ContainerState::is_running) {
            stop_container(&container.id)?;
        }
        // A migration that committed nothing (refused before its first commit, e.g. because
        // its backup failed the check) left the database as it was: nothing to put back, and
        // that backup may be the one thing that cannot be restored.
        let untouched = changes.migrated
            && run.report().revision_after == run.report().revision_before
            && database::status(sh, stack, &stack.bot_image).is_ok_and(|live| {
                live.effective_version() == run.report().revision_before
                    && run.report().state_before.as_deref() == Some(live.state.name())
            });
        let set_aside = if changes.migrated && !untouched {
            self.restore_pre_deploy_database(stack, changes)?
        } else {
            if untouched {
                run.detail("the migration committed nothing: the database is as it was");
            }
            None
        };
        let kept_on_host = set_aside.as_ref().and_then(|set_aside| {
            // A copy beside the backups, where the operator looks; the file in the volume stays.
            let name = backups::name(
                &stack.project,
                &self.time,
                run.report().revision_after,
                Some("set-aside-by-rollback"),
            );
            let host_file = self.state_dir.join(name);
            let bytes = changes
                .migration
                .as_ref()
                .map_or(process::UNKNOWN_SIZE, |m| m.bytes);
            let image = &stack.bot_image;
            let copied =
                database::copy_from_volume(sh, stack, image, &set_aside.file, &host_file, bytes)
                    .and_then(|()| backups::seal(&host_file).map(drop));
            if let Err(e) = &copied {
                run.info(&format!(
                    "warning: the set-aside database stays in the volume only ({}): {e:#}",
                    set_aside.file
                ));
            }
            copied.ok().map(|()| host_file)
        });
        let copied_to = kept_on_host.map(|h| format!(", copied to {}", h.display()));
        let set_aside = set_aside.map(|s| {
            format!(
                "the database the new bot served was set aside before the pre-deploy backup was put back: {}{} ({}); the previous bot does not have them",
                s.file,
                copied_to.unwrap_or_default(),
                s.rows
            )
        });
        if changes.migrated {
            // The volume holds the pre-deploy database again, whatever fails after this.
            let before = run.report().revision_before;
            run.edit().revision_after = before;
            if let Some(text) = &set_aside {
                journal::update(|r| {
                    r.volume = Some(format!("put back from the pre-deploy backup; {text}"))
                });
            }
        }
        // Said whatever fails from here on: what was set aside is never left unnamed.
        self.start_previous(stack, previous)
            .map_err(|error| match &set_aside {
                Some(text) => error.context(text.clone()),
                None => error,
            })?;
        Ok(set_aside)
    }

    /// The rest of a rollback: the project's tag names the previous image again, `-previous`
    /// what it named before, and the previous bot starts (waited for when it ran before).
    fn start_previous(&self, stack: &Stack, previous: &Previous) -> anyhow::Result<()> {
        let (sh, run) = (self.sh, self.run);
        let Some(image) = &previous.image else {
            return Ok(()); // there was no bot before this deploy
        };
        // The project's tag names the image that runs, so later tasks (`restart`, `status`,
        // the next deploy's comparison) start and describe the previous bot, not the failed one.
        let main_tag = &stack.bot_image;
        if image != main_tag {
            process::run(
                cmd!(sh, "docker tag {image} {main_tag}"),
                "naming the previous image as the project's again",
            )?;
            previous.put_back_tag(sh)?;
        }
        if let Some(id) = &previous.image_id {
            run.edit().image = Some(format!("{main_tag} ({})", short(id)));
        }
        let mut old = stack.clone();
        if let Some(env_file) = &previous.env_file {
            old.env_file = env_file.clone();
        }
        run.step("rollback: start previous bot", || old.up(sh))?;
        if previous.was_running {
            let timeout = Duration::from_secs(self.args.health_timeout);
            run.step("rollback: wait until healthy", || {
                wait_until_healthy(sh, &old, timeout)
            })?;
        }
        Ok(())
    }

    /// Puts back the database as it was before the migration, from the backup the migration
    /// took. Returns what it set aside when the live database had rows the backup has not
    /// (the new bot served meanwhile).
    pub(super) fn restore_pre_deploy_database(
        &self,
        stack: &Stack,
        changes: &Changes,
    ) -> anyhow::Result<Option<SetAside>> {
        let sh = self.sh;
        journal::volume(
            "being put back from the pre-deploy backup by the rollback (the migrated database is kept beside it)",
        );
        let restored = self.run.step("rollback: restore database", || {
            let staged;
            let source = match &changes.backup_on_host {
                Some(file) => file.as_path(),
                None => {
                    let migration = changes
                        .migration
                        .as_ref()
                        .context("no migration container to take the backup from")?;
                    staged = database::TempFile::new("rollback");
                    migration
                        .copy_backup(sh, &staged.0)
                        .context("the database changed and its backup cannot be read back")?;
                    staged.0.as_path()
                }
            };
            database::restore_from_host(sh, stack, &stack.bot_image, source, false)
        })?;
        // A committed migration means the new bot may have served: what it served is kept and
        // named whatever the counts say (rows changed in place do not show in them).
        let committed = {
            let report = self.run.report();
            report.revision_after != report.revision_before
        };
        let set_aside = SetAside::from_restore(
            restored.restored.replaced.as_deref(),
            restored.restored.rows.as_ref(),
            committed,
        );
        let revision = self.run.report().revision_before;
        journal::volume(format!(
            "put back from the pre-deploy backup (revision {})",
            revision.map_or("none".into(), |r| r.to_string())
        ));
        if let Some(s) = &set_aside {
            self.run
                .detail(format!("set aside: {} ({})", s.file, s.rows));
        }
        Ok(set_aside)
    }
}
/// The live database a rollback's restore replaced, when it held rows the restored backup
/// has not: where it is kept in the volume, and the rows per table it has more.
pub(super) struct SetAside {
    file: String,
    rows: String,
}
impl SetAside {
    /// From what `bot db restore` reported (where the replaced database is kept, and the rows
    /// per table): `None` when nothing was replaced, or when the migration never committed and
    /// the replaced content has no more rows in any table than the restored one (it is the same
    /// database). The history table's own row is not counted.
    fn from_restore(
        replaced: Option<&Path>,
        rows: Option<&RowCounts>,
        migration_committed: bool,
    ) -> Option<SetAside> {
        let file = replaced?.to_str()?;
        let more: Vec<String> = rows
            .into_iter()
            .flat_map(|rows| {
                rows.replaced
                    .iter()
                    .filter(|(table, _)| table.as_str() != "schema_history")
                    .filter_map(|(table, n)| {
                        let extra =
                            *n as i64 - rows.restored.get(table).copied().unwrap_or(0) as i64;
                        (extra > 0).then(|| format!("{table} +{extra}"))
                    })
            })
            .collect();
        if more.is_empty() && !migration_committed {
            return None;
        }
        let rows = if more.is_empty() {
            "no table has more rows than the backup; rows changed in place are not counted".into()
        } else {
            format!("rows it has more than the backup: {}", more.join(", "))
        };
        Some(SetAside {
            file: file.to_owned(),
            rows,
        })
    }
}
/// What to go back to.
pub(super) struct Previous {
    /// A name of the image the bot ran before this deploy.
    pub(super) image: Option<String>,
    /// That image's id.
    pub(super) image_id: Option<String>,
    /// The `-previous` tag, and the image it named before this deploy moved it.
    pub(super) previous_tag: (String, Option<String>),
    pub(super) env_file: Option<PathBuf>,
    pub(super) was_running: bool,
}

impl Previous {
    /// Makes `-previous` name again what it named before this deploy moved it (when it did):
    /// the way back from the last good deploy stays.
    pub(super) fn put_back_tag(&self, sh: &xshell::Shell) -> anyhow::Result<()> {
        let (tag, before) = &self.previous_tag;
        if self.image.as_deref() != Some(tag.as_str()) {
            return Ok(()); // this deploy did not move it
        }
        match before {
            Some(id) => process::run(
                cmd!(sh, "docker tag {id} {tag}"),
                "naming the image before the last deploy as -previous again",
            )
            .map(drop),
            None => {
                let _ = crate::process::output(cmd!(sh, "docker rmi {tag}"));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(replaced: &[(&str, u64)], restored: &[(&str, u64)]) -> RowCounts {
        let map = |rows: &[(&str, u64)]| rows.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        RowCounts {
            replaced: map(replaced),
            restored: map(restored),
        }
    }

    #[test]
    fn a_restore_over_newer_rows_is_said_table_by_table() {
        let replaced = Path::new("/data/bot_database.db.replaced-20261126T101010Z");
        let rows = counts(
            &[("users", 12), ("command_log", 30), ("schema_history", 4)],
            &[("users", 10), ("command_log", 30), ("schema_history", 3)],
        );
        let set_aside = SetAside::from_restore(Some(replaced), Some(&rows), true).unwrap();
        assert_eq!(
            set_aside.file,
            "/data/bot_database.db.replaced-20261126T101010Z"
        );
        assert_eq!(
            set_aside.rows, "rows it has more than the backup: users +2",
            "the history's own row is the migration's, not the bot's"
        );
        let same = counts(&[("users", 10)], &[("users", 10)]);
        let x = Some(Path::new("/data/x"));
        assert!(
            SetAside::from_restore(x, Some(&same), false).is_none(),
            "a migration that never committed left the same database"
        );
        let kept = SetAside::from_restore(x, Some(&same), true)
            .expect("a committed migration's database is kept");
        assert!(
            kept.rows.contains("changed in place are not counted"),
            "{}",
            kept.rows
        );
        assert!(SetAside::from_restore(None, None, true).is_none());
    }
}
