//! What a deploy tidies: runs an earlier deploy left unfinished (finished forward, their way
//! back taken over), pre-deploy backups left in migration containers (saved), and, after a
//! deploy that changed something, old release tags beyond `--keep`.

use std::path::Path;

use xshell::Shell;

use crate::compose::Stack;
use crate::database;
use crate::docker::{self, ContainerState};
use crate::exit;
use crate::history;
use crate::images;
use crate::journal;
use crate::output::Run;
use crate::process;

use super::{Deploy, shared::*, short};

impl Deploy<'_> {
    /// Names the runs that were killed before they ended and takes them over: this run finishes
    /// them forward (their migration containers are saved from and removed next), and its
    /// record carries their way back, so that `rollback` returns to where they started.
    pub(super) fn finish_unfinished_runs(&self) -> anyhow::Result<()> {
        let unfinished = unfinished_runs(&self.state_dir, &self.time)?;
        for earlier in &unfinished {
            let line = format!("{}; this run finishes it", describe_unfinished(earlier));
            self.run.info(&line);
            self.run.edit().finished_earlier.push(line);
        }
        journal::take_over(unfinished);
        Ok(())
    }

    /// Leaves the bot service one container when a killed deploy left two (the fast path
    /// starts the new bot beside the old one): the one [`kept_bot_container`] names stays.
    /// Returns those left.
    pub(super) fn remove_extra_bot_containers(
        &self,
        containers: Vec<ContainerState>,
    ) -> Vec<ContainerState> {
        let Some(keep) = kept_bot_container(&containers) else {
            return containers;
        };
        let mut left = Vec::new();
        for (i, container) in containers.into_iter().enumerate() {
            if i == keep {
                left.push(container);
                continue;
            }
            let removed = process::run(
                force_remove_argv(&container.id),
                "removing a bot container a killed deploy left",
            );
            match removed {
                Ok(_) => self.run.info(&format!(
                    "removed the bot container {} ({}) that a killed deploy left beside the one kept",
                    container.name, container.status
                )),
                Err(e) => {
                    self.run.info(&format!("warning: {e:#}"));
                    left.push(container);
                }
            }
        }
        left
    }

    /// Removes the project's release tags beyond the newest `--keep`, never the tag of an
    /// image that runs, that `-previous` or the project's tag names, or that the history's
    /// last change went from or to. A failure is only said: the deploy is done.
    pub(super) fn prune_release_tags(&self, stack: &Stack, previous_tag: &str) {
        let sh = self.sh;
        let mut needed: Vec<String> = [stack.bot_image.as_str(), previous_tag]
            .iter()
            .filter_map(|tag| docker::image_id(sh, tag).ok().flatten())
            .collect();
        if let Ok(Some(running)) = stack.bot_container(sh) {
            needed.push(running.image_id);
        }
        if let Some(last) = history::read(&self.state_dir)
            .ok()
            .and_then(|records| history::last_change(&records).cloned())
        {
            needed.extend(last.image_before.into_iter().chain(last.image_after));
        }
        let this_run = journal::read(|r| [r.image_before.clone(), r.image_after.clone()]);
        needed.extend(this_run.into_iter().flatten().flatten());
        match images::prune_release_tags(sh, stack, self.args.keep, &needed) {
            Ok(removed) if !removed.is_empty() => self.run.info(&format!(
                "removed {} old release tag{} (keeping the newest {})",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" },
                self.args.keep.max(1)
            )),
            Ok(_) => {}
            Err(e) => self
                .run
                .info(&format!("warning: old release tags were not pruned: {e:#}")),
        }
    }
}

/// Saves the pre-deploy backups that migration containers of earlier runs still hold (a killed
/// deploy, a copy that failed) into `dir` under their names, says so, and removes those
/// containers. A container still running is left alone and refuses the task: nothing must run
/// beside a migration, a backup or a restore at work.
pub fn save_leftover_backups(
    sh: &Shell,
    stack: &Stack,
    dir: &Path,
    run: &Run,
) -> anyhow::Result<()> {
    let (saved, mut running) = database::save_leftover_backups(sh, stack, dir)?;
    running.extend(database::remove_leftover_helpers(sh, &stack.project)?);
    for file in saved {
        run.info(&format!(
            "saved the pre-deploy backup an earlier run left behind: {}",
            file.display()
        ));
    }
    if !running.is_empty() {
        let ids: Vec<&str> = running.iter().map(|id| short(id)).collect();
        return Err(exit::refused(format!(
            "a container an earlier run of this project started is still running ({}: a migration, a backup or a restore); nothing was changed. Wait for it to end (`docker wait {}`), then run this again",
            ids.join(", "),
            ids.join(" ")
        )));
    }
    Ok(())
}
