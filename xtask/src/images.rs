//! Building the static binaries and the `scratch` images.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context;
use xshell::{Cmd, Shell, cmd};

use crate::compose::Stack;
use crate::{docker, process, project};

/// The target the static binaries are built for; always passed, so build scripts and proc-macros
/// are not linked statically too.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The image ids after a build.
pub struct Built {
    /// The bot's image id.
    pub bot: String,
}

/// Builds `bot` (and, in demo runs, `telegram-standin`) as static binaries, then their images
/// from a context folder that holds only what the images need.
pub fn build(sh: &Shell, stack: &Stack, schema_head: Option<u32>) -> anyhow::Result<Built> {
    // Held until the images are built: the binaries and the context folder are this checkout's
    // one copy, which another build must not replace meanwhile.
    let binaries = build_binaries(sh, schema_head)?;
    let context = project::root().join(DOCKER_CONTEXT);
    // A fresh folder and fresh copies: the legacy builder can take a hard-linked binary for an
    // unchanged one and ship the old image.
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    for dir in ["data", "tmp"] {
        std::fs::create_dir_all(context.join(dir))?;
    }
    for binary in ["bot", "telegram-standin"] {
        std::fs::copy(binaries.dir.join(binary), context.join(binary))?;
    }
    for (build, tag) in image_builds(sh, stack) {
        process::run(build, &format!("building the image {tag}"))?;
    }
    let bot = docker::image_id(sh, &stack.bot_image)?.ok_or_else(|| {
        anyhow::anyhow!("the image {} was built but is not there", stack.bot_image)
    })?;
    Ok(Built { bot })
}

/// The static binaries of one build, in `dir`; no other build of this checkout replaces them
/// while this value lives.
pub struct Binaries {
    /// The folder holding `bot` and `telegram-standin`.
    pub dir: PathBuf,
    _lock: File,
}

impl Binaries {
    /// The `bot` binary.
    pub fn bot(&self) -> PathBuf {
        self.dir.join("bot")
    }
}

/// Builds `bot` and `telegram-standin` as static release binaries. `schema_head` builds an
/// older release whose schema history stops at that revision (for tests and benchmarks).
///
/// Two processes building at once (deploys of two projects, a test and a benchmark) would
/// each overwrite the other's binary between its build and its use, and an image could ship
/// a half-written or wrong binary: the build takes this checkout's build lock first, waiting
/// for the other, and keeps it in the returned value.
pub fn build_binaries(sh: &Shell, schema_head: Option<u32>) -> anyhow::Result<Binaries> {
    let lock = build_lock()?;
    let others = other_target_dirs(schema_head);
    seed_target_dir(sh, &target_dir(schema_head), &others);
    compile(sh, schema_head)?;
    Ok(Binaries {
        dir: release_dir(schema_head),
        _lock: lock,
    })
}

/// Cargo's target folder for a build: an older release (`schema_head`) has its own, so that
/// switching between it and the current one rebuilds nothing (the schema head is read by a
/// build script from the environment, and one folder would rebuild the bot at every switch).
fn target_dir(schema_head: Option<u32>) -> PathBuf {
    let target = project::root().join("target");
    match schema_head {
        Some(head) => target.join(format!("schema-head-{head}")),
        None => target,
    }
}

/// The target folders of this checkout's other release builds (the current one's and the
/// older ones'), the current one's first.
fn other_target_dirs(schema_head: Option<u32>) -> Vec<PathBuf> {
    let target = project::root().join("target");
    let mut dirs = vec![target.clone()];
    if let Ok(entries) = std::fs::read_dir(&target) {
        let mut older: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("schema-head-"))
            .map(|e| e.path())
            .collect();
        older.sort();
        dirs.extend(older);
    }
    let own = target_dir(schema_head);
    dirs.retain(|dir| *dir != own);
    dirs
}

/// A release build's folder that has no static build yet starts as a copy of another's that
/// has one: the dependencies are the same, so only the workspace's crates compile, not every
/// dependency (minutes on a new machine, once per schema head). The copy is made beside and
/// renamed into place, so a failed one (a full disk) leaves nothing half-written; it is then
/// only said, and the build compiles from nothing.
pub fn seed_target_dir(sh: &Shell, target: &Path, others: &[PathBuf]) {
    let built = |dir: &Path| dir.join(TARGET).join("release").exists();
    if built(target) {
        return;
    }
    let Some(source) = others.iter().find(|dir| built(dir)) else {
        return;
    };
    for dir in ["release", TARGET] {
        let (from, to) = (source.join(dir), target.join(dir));
        if to.exists() || !from.exists() {
            continue;
        }
        // A name of this run's own: the copy of a run killed with SIGKILL goes on in its own
        // process group, and must neither be copied into nor renamed into place. What earlier
        // runs left is removed where it can be (a copy still writing keeps its folder).
        let prefix = format!(".{dir}.seeding");
        for entry in std::fs::read_dir(target).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let partial = target.join(format!("{prefix}.{}", std::process::id()));
        let copied = std::fs::create_dir_all(target)
            .map_err(anyhow::Error::from)
            .and_then(|()| process::run(cmd!(sh, "cp -a -T {from} {partial}"), "copying"))
            .and_then(|_| Ok(std::fs::rename(&partial, &to)?));
        if let Err(e) = copied {
            let _ = std::fs::remove_dir_all(&partial);
            eprintln!(
                "could not start {} from {} ({e:#}); it is built from nothing",
                to.display(),
                from.display()
            );
        }
    }
}

/// The folder of the static binaries a build with `schema_head` makes.
pub fn release_dir(schema_head: Option<u32>) -> PathBuf {
    target_dir(schema_head).join(TARGET).join("release")
}

/// Takes the checkout's build lock (an operating-system lock: a holder that dies holds
/// nothing), waiting for another build to finish.
fn build_lock() -> anyhow::Result<File> {
    let target = project::root().join("target");
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let path = target.join("xtask-build.lock");
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the build lock {}", path.display()))?;
    let cannot = || format!("cannot lock {}", path.display());
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            eprintln!(
                "waiting for another build of this checkout to finish (lock {})",
                path.display()
            );
            file.lock().with_context(cannot)?;
        }
        Err(TryLockError::Error(e)) => return Err(e).with_context(cannot),
    }
    Ok(file)
}

fn compile(sh: &Shell, schema_head: Option<u32>) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let head = schema_head.map(|h| h.to_string()).unwrap_or_default();
    let target_dir = target_dir(schema_head);
    let rustflags = format!("CARGO_TARGET_{}_RUSTFLAGS", TARGET.replace('-', "_"));
    process::run_within(
        cmd!(
            sh,
            "{cargo} build --release --locked --target {TARGET} --target-dir {target_dir} -p bot -p telegram-standin"
        )
        .env(rustflags.to_uppercase(), "-C target-feature=+crt-static")
        .env("TGBOT_SCHEMA_HEAD", head),
        "building the static binaries",
        std::time::Duration::from_secs(3600),
    )
    .map(drop)
}

/// The folder the images are built from: the binaries and the empty folders they need.
const DOCKER_CONTEXT: &str = "target/docker-context";

/// The `docker build` commands [`build`] runs, in order, with the tag each makes: the bot's
/// image, and the stand-in's in demo runs (a dry run shows them).
pub fn image_builds<'a>(sh: &'a Shell, stack: &Stack) -> Vec<(Cmd<'a>, String)> {
    let root = project::root();
    let context = root.join(DOCKER_CONTEXT);
    let standin = ("docker/standin.Dockerfile", &stack.standin_image);
    let images = [("docker/Dockerfile", &stack.bot_image)];
    let images = images.into_iter().chain(stack.demo.then_some(standin));
    let build = |(file, tag): (&str, &String)| {
        let dockerfile = root.join(file);
        let build = cmd!(
            sh,
            "docker build --quiet -f {dockerfile} -t {tag} {context}"
        );
        (build, tag.clone())
    };
    images.map(build).collect()
}

/// Whether the bot image `image` holds the very `bot` binary at `binary`: then a build from
/// this checkout gives the same image (the build's cache), and a deploy replaces nothing. Read
/// through a container that is created, copied from and removed, never started.
pub fn holds_binary(
    sh: &Shell,
    image: &str,
    binary: &Path,
    labels: &[String],
) -> anyhow::Result<bool> {
    let create = cmd!(sh, "docker create {labels...} {image}");
    let helper = docker::Throwaway::create(sh, create, "reading the image's binary")?;
    let copy = crate::database::TempFile::new("image-binary");
    let bytes = std::fs::metadata(binary)?.len();
    crate::database::copy_out(sh, &format!("{}:/bot", helper.id), &copy.0, bytes)?;
    Ok(std::fs::read(&copy.0)? == std::fs::read(binary)?)
}

/// Whether `tag` (the part after `tgbot-bot:`) is a release tag of `project`: `<project>-<git
/// revision or "nogit">-<time>`, as a deploy makes it. Another project whose name starts with this
/// one's (`p` and `p-x`) never matches: the rest must be exactly a revision and a time.
pub fn is_release_tag_of(tag: &str, project: &str) -> bool {
    let Some(rest) = tag
        .strip_prefix(project)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    let Some((revision, time)) = rest.split_once('-') else {
        return false;
    };
    let revision_ok = revision == "nogit"
        || (!revision.is_empty() && revision.chars().all(|c| c.is_ascii_hexdigit()));
    revision_ok && crate::clock::is_tag_time(time)
}

/// The release tags to remove: all but the newest `keep` (by the time in the tag), and beyond
/// them all but the newest tag of each image in `needed` (the running image, the project's tag,
/// `-previous`, and the images the deploy history can roll back to or from): a needed image
/// always keeps a release tag, and re-runs of one image do not pile up tags.
pub fn release_tags_to_prune(
    tags: &[(String, String)],
    project: &str,
    keep: usize,
    needed: &[String],
) -> Vec<String> {
    let mut releases: Vec<&(String, String)> = tags
        .iter()
        .filter(|(tag, _)| is_release_tag_of(tag, project))
        .collect();
    // Newest first, by the time at the tag's end.
    releases.sort_by(|a, b| {
        let time = |t: &str| t.rsplit('-').next().unwrap_or("").to_owned();
        time(&b.0).cmp(&time(&a.0))
    });
    let keep = keep.max(1);
    let newest = releases.iter().take(keep).map(|(_, id)| id.as_str());
    let mut kept_images: Vec<&str> = newest.collect();
    let mut pruned = Vec::new();
    for (tag, id) in releases.into_iter().skip(keep) {
        if needed.iter().any(|n| n == id) && !kept_images.contains(&id.as_str()) {
            kept_images.push(id);
        } else {
            pruned.push(tag.clone());
        }
    }
    pruned
}

/// Removes `stack`'s release tags beyond the newest `keep` (see [`release_tags_to_prune`]); an
/// image that other tags or containers still use stays (only its tag goes). Returns the tags
/// removed.
pub fn prune_release_tags(
    sh: &Shell,
    stack: &Stack,
    keep: usize,
    needed: &[String],
) -> anyhow::Result<Vec<String>> {
    let (repository, _) = stack
        .bot_image
        .split_once(':')
        .unwrap_or((&stack.bot_image, ""));
    let format = "{{.Tag}} {{.ID}}";
    let list = cmd!(
        sh,
        "docker image ls --no-trunc --format {format} {repository}"
    );
    let listed = process::run(list, "listing the release tags")?;
    let tags = listed.stdout.lines().filter_map(|l| l.split_once(' '));
    let tags: Vec<(String, String)> = tags
        .map(|(tag, id)| (tag.to_owned(), id.trim().to_owned()))
        .collect();
    let mut removed = Vec::new();
    for tag in release_tags_to_prune(&tags, &stack.project, keep, needed) {
        let full = format!("{repository}:{tag}");
        // Untags; the image itself goes only when nothing else names or uses it.
        if process::output(cmd!(sh, "docker rmi {full}")).is_ok_and(|o| o.status.success()) {
            removed.push(full);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_left_running_by_a_killed_run_never_ends_up_in_place() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let root = std::env::temp_dir().join(format!("xtask-seed-orphan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let sh = Shell::new().unwrap();
        let built = root.join("target");
        for i in 0..2000 {
            let file = built.join(TARGET).join(format!("release/deps/lib{i}.rlib"));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, "compiled").unwrap();
        }
        std::fs::create_dir_all(built.join("release/build")).unwrap();
        let older = built.join("schema-head-3");
        // The copy of a run killed with SIGKILL (cp has a process group of its own) still writes.
        let deps = older.join(format!(".{TARGET}.seeding.1/release/deps"));
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in (0u64..).take_while(|_| !done.load(Ordering::SeqCst)) {
                    let _ = std::fs::create_dir_all(&deps);
                    let _ = std::fs::write(deps.join(format!("orphan{}", i % 50)), "half");
                }
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            seed_target_dir(&sh, &older, std::slice::from_ref(&built));
            done.store(true, Ordering::SeqCst);
        });
        assert!(
            !older.join(TARGET).join(TARGET).exists(),
            "copied into a folder"
        );
        let seeded = std::fs::read_dir(older.join(TARGET).join("release/deps")).unwrap();
        assert_eq!(
            seeded.count(),
            2000,
            "the seeded folder is a whole copy of the build"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_new_release_folder_starts_from_another_build_and_an_existing_one_is_left_alone() {
        let root = std::env::temp_dir().join(format!("xtask-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let sh = Shell::new().unwrap();
        let built = root.join("target");
        let artifact = built.join(TARGET).join("release/deps/libdep.rlib");
        std::fs::create_dir_all(artifact.parent().unwrap()).unwrap();
        std::fs::create_dir_all(built.join("release/build")).unwrap();
        std::fs::write(&artifact, "compiled").unwrap();
        let older = built.join("schema-head-3");
        let never_built = root.join("never-built");

        seed_target_dir(&sh, &older, &[never_built.clone(), built.clone()]);
        let seeded = older.join(TARGET).join("release/deps/libdep.rlib");
        assert_eq!(std::fs::read_to_string(&seeded).unwrap(), "compiled");
        assert!(older.join("release/build").is_dir());
        assert!(
            !older
                .join(format!(".{TARGET}.seeding.{}", std::process::id()))
                .exists()
        );

        // A folder with a build of its own is never overwritten.
        std::fs::write(&seeded, "its own").unwrap();
        std::fs::write(&artifact, "newer elsewhere").unwrap();
        seed_target_dir(&sh, &older, &[built]);
        assert_eq!(std::fs::read_to_string(&seeded).unwrap(), "its own");

        // Nothing to start from: nothing is made.
        seed_target_dir(&sh, &root.join("alone"), &[never_built]);
        assert!(!root.join("alone").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn release_tags_are_told_from_other_projects_and_other_tags() {
        assert!(is_release_tag_of("p-0123456789ab-20261126t101010z", "p"));
        assert!(is_release_tag_of("p-nogit-20261126t101010z", "p"));
        assert!(!is_release_tag_of("p-x-0123456789ab-20261126t101010z", "p"));
        assert!(is_release_tag_of(
            "p-x-0123456789ab-20261126t101010z",
            "p-x"
        ));
        assert!(!is_release_tag_of("p-previous", "p"));
        assert!(!is_release_tag_of("p", "p"));
        assert!(!is_release_tag_of("p-0123-2026112t101010z", "p"));
    }

    #[test]
    fn pruning_keeps_the_newest_and_every_needed_image() {
        let tag = |n: u32| format!("p-abc-202611{n:02}t101010z");
        let tags: Vec<(String, String)> = (1..=6)
            .map(|n| (tag(n), format!("sha256:{n}")))
            .chain([
                ("p".to_owned(), "sha256:6".to_owned()),
                ("p-previous".to_owned(), "sha256:1".to_owned()),
                ("q-abc-20261101t101010z".to_owned(), "sha256:9".to_owned()),
            ])
            .collect();
        let needed = vec!["sha256:6".to_owned(), "sha256:1".to_owned()];
        let pruned = release_tags_to_prune(&tags, "p", 2, &needed);
        // 6 and 5 are the newest two; 1 is needed (what `-previous` names); 4, 3, 2 go.
        assert_eq!(pruned, vec![tag(4), tag(3), tag(2)]);
        // Re-runs of the running image: its newest tag stays, the others go.
        let id = |n| if n == 1 { "sha256:a" } else { "sha256:b" }.to_owned();
        let reruns: Vec<(String, String)> = (1..=4).map(|n| (tag(n), id(n))).collect();
        let needed = vec!["sha256:a".to_owned(), "sha256:b".to_owned()];
        assert_eq!(
            release_tags_to_prune(&reruns, "p", 1, &needed),
            vec![tag(3), tag(2)]
        );
        assert!(release_tags_to_prune(&tags, "p", 10, &needed).is_empty());
        assert_eq!(
            release_tags_to_prune(&tags, "p", 0, &[]).len(),
            5,
            "at least one is always kept"
        );
    }
}
