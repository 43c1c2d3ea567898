//! Building the static binaries and the `scratch` images.

use std::path::Path;

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
    build_binaries(sh, schema_head)?;
    let release = root.join("target").join(TARGET).join("release");
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

/// Builds `bot` and `telegram-standin` as static release binaries. `schema_head` builds an
/// older release whose schema history stops at that revision (for tests and benchmarks).
pub fn build_binaries(sh: &Shell, schema_head: Option<u32>) -> anyhow::Result<()> {
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
