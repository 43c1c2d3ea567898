//! `cargo xtask doctor`: the preflight checks alone, each with its fix. What it prints is
//! scrubbed of the environment file's secrets (see [`crate::secrets`]).

use serde_json::json;
use xshell::{Shell, cmd};

use crate::backups;
use crate::compose::{Flavour, Stack};
use crate::database;
use crate::docker;
use crate::exit;
use crate::host::{Engine, SshTarget};
use crate::process;
use crate::project::{self, StackArgs};
use crate::secrets;

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
    fix: String,
}

/// Runs every check; fails (exit 4) when one fails.
pub fn run(sh: &Shell, args: &StackArgs) -> anyhow::Result<()> {
    let mut checks = Vec::new();
    let project = project::project_name(args.project_name.as_deref())?;
    let engine = Engine::current();
    if let Some(target) = engine.ssh() {
        checks.push(ssh_login(sh, &target));
    }
    let daemon = docker::check_daemon(sh);
    checks.push(Check {
        name: "Docker daemon reachable",
        ok: daemon.is_ok(),
        detail: daemon.as_ref().map_or_else(
            |e| e.to_string(),
            |v| format!("engine {v} ({})", engine.describe()),
        ),
        fix: match engine.ssh() {
            Some(_) => "on the server: start Docker (`sudo systemctl start docker`) and let the ssh user run `docker` (`sudo usermod -aG docker USER`)".into(),
            None => "start it (`sudo systemctl start docker`) or point --host, DOCKER_HOST or `docker context use` at one".into(),
        },
    });
    let flavour = Flavour::detect(sh);
    checks.push(Check {
        name: "Docker Compose found",
        ok: flavour.is_ok(),
        detail: flavour.as_ref().map_or_else(|e| e.to_string(), Flavour::describe),
        fix: "install the compose plugin (https://docs.docker.com/compose/install/) or docker-compose 1.28+".into(),
    });
    let stack = Stack::new(sh, &project, args.demo).ok();
    if let (Some(_), Some(stack)) = (engine.remote(), &stack) {
        checks.push(compose_reaches(sh, stack, &engine));
    }
    let env_file = args
        .env_file
        .clone()
        .or_else(|| stack.as_ref().map(|s| s.env_file.clone()))
        .unwrap_or_else(|| project::root().join(".env"));
    let token = project::env_file_has_token(&env_file);
    checks.push(Check {
        name: "environment file with BOT_TOKEN",
        ok: token.as_ref().is_ok_and(|t| *t),
        detail: match &token {
            Ok(true) => format!("{} has a token", env_file.display()),
            Ok(false) => format!("{} has no BOT_TOKEN", env_file.display()),
            // Names the line by its number only, with the way to write it.
            Err(e) => e.to_string(),
        },
        fix: match &token {
            Err(_) => format!("correct that line of {}", env_file.display()),
            Ok(_) => "copy .env.example to .env and set BOT_TOKEN (or use --demo)".into(),
        },
    });
    let state_dir = args.state_dir(&project);
    let shown = state_dir.display();
    let image = stack
        .as_ref()
        .filter(|_| daemon.is_ok())
        .and_then(|s| docker::image_id(sh, &s.bot_image).ok().flatten().map(|_| s));
    let live = image.and_then(|s| database::status(sh, s, &s.bot_image).ok());
    let free = backups::free_bytes(sh, &state_dir);
    let needed = live.as_ref().map_or(0, |l| l.copy_bytes());
    let room = needed + needed / 10 + 64 * 1024;
    checks.push(Check {
        name: "room for a backup",
        ok: free.as_ref().is_ok_and(|f| *f > room),
        detail: match &free {
            Ok(f) => format!("{f} bytes free in {shown}, the database has {needed}"),
            Err(e) => e.to_string(),
        },
        fix: "free some space, or pass --backup-dir to a roomier disk".into(),
    });
    if let Some(s) = image {
        let wrong = database::fix_ownership(sh, s, &s.bot_image, true);
        checks.push(Check {
            name: "database files owned by the bot",
            ok: wrong.as_ref().is_ok_and(Vec::is_empty),
            detail: match &wrong {
                Ok(w) if w.is_empty() => format!("volume {}", s.volume()),
                Ok(w) => w.join(", "),
                Err(e) => e.to_string(),
            },
            fix: "run `cargo xtask prod-migrate` (it gives them to the bot's user 10001)".into(),
        });
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if args.json {
        let list: Vec<_> = checks
            .iter()
            .map(|c| json!({"check": c.name, "ok": c.ok, "detail": c.detail, "fix": if c.ok { None } else { Some(&c.fix) }}))
            .collect();
        let mut report = json!({"project": project, "ok": failed == 0, "checks": list});
        secrets::scrub_json(&mut report);
        println!("{report}");
    } else {
        for c in &checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            let line = format!("{mark} {}: {}", c.name, c.detail);
            println!("{}", secrets::scrub(&line));
            if !c.ok {
                println!("     fix: {}", secrets::scrub(&c.fix));
            }
        }
    }
    let message = format!("{failed} of {} checks failed", checks.len());
    if failed > 0 {
        return Err(exit::not_ready(message));
    }
    Ok(())
}

/// Whether `ssh` logs in to the server without a question (the Docker CLI and Compose run it
/// with no terminal to answer one).
fn ssh_login(sh: &Shell, target: &SshTarget) -> Check {
    let args = target.args();
    let shown: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    let shown = format!("ssh {}", shown.join(" "));
    let login = process::output(cmd!(
        sh,
        "ssh -o BatchMode=yes -o ConnectTimeout=10 {args...} true"
    ));
    let (ok, detail) = match &login {
        Ok(out) if out.status.success() => (true, format!("`{shown}` logs in")),
        Ok(out) => (false, format!("`{shown}` failed: {}", stderr(out))),
        Err(e) => (false, format!("the ssh command is missing ({e})")),
    };
    Check {
        name: "ssh login to the server",
        ok,
        detail,
        fix: format!(
            "make `{shown} true` work without a question: a key in ssh-agent or ~/.ssh/config (IdentityFile), and the server's host key in ~/.ssh/known_hosts (`ssh {shown_tail}` once by hand); install openssh-client if ssh is missing",
            shown_tail = shown.trim_start_matches("ssh ")
        ),
    }
}

/// Whether Compose reaches the engine too: docker-compose 1.x needs Python's paramiko for an
/// `ssh://` address even when the Docker CLI gets there.
fn compose_reaches(sh: &Shell, stack: &Stack, engine: &Engine) -> Check {
    let listed = process::output(stack.cmd(sh).args(["ps", "-q"]));
    let flavour = stack.flavour.describe();
    let (ok, detail) = match &listed {
        Ok(out) if out.status.success() => {
            (true, format!("{flavour} reaches {}", engine.describe()))
        }
        Ok(out) => (false, format!("`{flavour} ps` failed: {}", stderr(out))),
        Err(e) => (false, e.to_string()),
    };
    // docker-py's own words when paramiko is missing, not any traceback that names it.
    let paramiko =
        detail.contains("Install paramiko") || detail.contains("No module named 'paramiko'");
    let ipv6 = engine.ssh().is_some_and(|t| t.server.contains(':'));
    let fix = if paramiko {
        "install paramiko for docker-compose 1.x (`sudo apt install python3-paramiko`, or `pip install paramiko`), or use the compose plugin".into()
    } else if ipv6 && matches!(stack.flavour, crate::compose::Flavour::V1(_)) {
        "docker-compose 1.x cannot take an IPv6 address in ssh://: name the server (a Host entry in ~/.ssh/config, or /etc/hosts) and pass --host ssh://user@that-name, or use the compose plugin".into()
    } else {
        "check the ssh login and the engine above; `docker compose` (the plugin) needs nothing more"
            .into()
    };
    Check {
        name: "Compose reaches the engine",
        ok,
        detail,
        fix,
    }
}

/// What a command printed on stderr, trimmed.
fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}
