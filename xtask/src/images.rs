//! Building the static binaries and the `scratch` images.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::compose::Stack;
use crate::docker;
use crate::process;
use crate::project;

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
    let root = project::root();
    // Held until the images are built: the binaries and the context folder are this checkout's
    // one copy, which another build must not replace meanwhile.
    let binaries = build_binaries(sh, schema_head)?;
    let release = &binaries.dir;
    let context = root.join("target/docker-context");
    // A fresh folder and fresh copies: the legacy builder can take a hard-linked binary for an
    // unchanged one and ship the old image.
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    for dir in ["data", "tmp"] {
        std::fs::create_dir_all(context.join(dir))?;
    }
    for binary in ["bot", "telegram-standin"] {
        std::fs::copy(release.join(binary), context.join(binary))?;
    }
    build_image(
        sh,
        &root.join("docker/Dockerfile"),
        &context,
        &stack.bot_image,
    )?;
    if stack.demo {
        build_image(
            sh,
            &root.join("docker/standin.Dockerfile"),
            &context,
            &stack.standin_image,
        )?;
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
    compile(sh, schema_head)?;
    Ok(Binaries {
        dir: project::root().join("target").join(TARGET).join("release"),
        _lock: lock,
    })
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
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            eprintln!(
                "waiting for another build of this checkout to finish (lock {})",
                path.display()
            );
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    Ok(file)
}

fn compile(sh: &Shell, schema_head: Option<u32>) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let head = schema_head.map(|h| h.to_string()).unwrap_or_default();
    process::run_within(
        cmd!(
            sh,
            "{cargo} build --release --locked --target {TARGET} -p bot -p telegram-standin"
        )
        .env(
            format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                TARGET.to_uppercase().replace('-', "_")
            ),
            "-C target-feature=+crt-static",
        )
        .env("TGBOT_SCHEMA_HEAD", head),
        "building the static binaries",
        std::time::Duration::from_secs(3600),
    )
    .map(drop)
}

fn build_image(sh: &Shell, dockerfile: &Path, context: &Path, tag: &str) -> anyhow::Result<()> {
    process::run(
        cmd!(
            sh,
            "docker build --quiet -f {dockerfile} -t {tag} {context}"
        ),
        &format!("building the image {tag}"),
    )
    .map(drop)
}
