//! The production defaults of `docker/docker-compose.prod.yml`, checked on the running bot's
//! container: a read-only root (with a tmpfs /tmp for the heartbeat and SQLite's temporary
//! files), no capabilities, `no-new-privileges`, a memory limit and a rotated log. And the
//! README's scheduled backup, run as written.

mod common;

use common::{Project, SERIAL, root, text};
use serde_json::{Value, json};

/// What is missing from a container's `docker inspect` for the production defaults; empty when
/// nothing is.
fn hardening_problems(inspect: &Value) -> Vec<String> {
    let host = &inspect["HostConfig"];
    let mut problems = Vec::new();
    if host["ReadonlyRootfs"] != json!(true) {
        problems.push(format!(
            "the root file system is not read-only: {}",
            host["ReadonlyRootfs"]
        ));
    }
    if host["Tmpfs"].get("/tmp").is_none() {
        problems.push(format!("no tmpfs on /tmp: {}", host["Tmpfs"]));
    }
    let drops: Vec<&str> = host["CapDrop"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !drops.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        problems.push(format!(
            "capabilities are not all dropped: {}",
            host["CapDrop"]
        ));
    }
    if host["CapAdd"].as_array().is_some_and(|a| !a.is_empty()) {
        problems.push(format!("capabilities are added: {}", host["CapAdd"]));
    }
    let no_new_privileges = host["SecurityOpt"].as_array().is_some_and(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .any(|o| o == "no-new-privileges" || o == "no-new-privileges:true")
    });
    if !no_new_privileges {
        problems.push(format!("no no-new-privileges: {}", host["SecurityOpt"]));
    }
    if host["Memory"].as_i64().unwrap_or(0) <= 0 {
        problems.push(format!("no memory limit: {}", host["Memory"]));
    }
    let log = &host["LogConfig"];
    if log["Type"] != "json-file" {
        problems.push(format!("the log driver is not json-file: {log}"));
    }
    for option in ["max-size", "max-file"] {
        if log["Config"].get(option).and_then(Value::as_str).is_none() {
            problems.push(format!("the log has no {option}: {log}"));
        }
    }
    problems
}

/// A hardened container's inspect, trimmed to what [`hardening_problems`] reads.
fn hardened() -> Value {
    json!({
        "HostConfig": {
            "ReadonlyRootfs": true,
            "Tmpfs": {"/tmp": "size=64m,uid=10001,gid=10001,mode=0700"},
            "CapDrop": ["ALL"],
            "CapAdd": null,
            "SecurityOpt": ["no-new-privileges:true"],
            "Memory": 268435456,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "5"}}
        }
    })
}

/// Takes one default away from a `HostConfig`.
type Break = fn(&mut Value);

#[test]
fn the_check_fails_when_any_default_is_missing() {
    assert_eq!(hardening_problems(&hardened()), Vec::<String>::new());
    let breaks: [(&str, Break); 8] = [
        ("read-only", |h| h["ReadonlyRootfs"] = json!(false)),
        ("tmpfs", |h| h["Tmpfs"] = json!(null)),
        ("cap-drop", |h| h["CapDrop"] = json!(null)),
        ("cap-add", |h| h["CapAdd"] = json!(["NET_ADMIN"])),
        ("no-new-privileges", |h| h["SecurityOpt"] = json!(null)),
        ("memory", |h| h["Memory"] = json!(0)),
        ("log driver", |h| h["LogConfig"]["Type"] = json!("local")),
        ("max-size", |h| {
            h["LogConfig"]["Config"] = json!({"max-file": "5"})
        }),
    ];
    for (what, break_it) in breaks {
        let mut inspect = hardened();
        break_it(&mut inspect["HostConfig"]);
        assert!(
            !hardening_problems(&inspect).is_empty(),
            "the check misses a container without {what}"
        );
    }
    let mut inspect = hardened();
    inspect["HostConfig"]["LogConfig"]["Config"] = json!({"max-size": "10m"});
    assert!(!hardening_problems(&inspect).is_empty(), "max-file");
}

/// The lines of the README's "Backups on a schedule" section that run `cargo xtask`.
fn scheduled_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("### Backups on a schedule")
        .expect("the README has a section \"Backups on a schedule\"");
    let section = &readme[start + 3..];
    let section = &section[..section.find("\n## ").or(section.find("\n### ")).unwrap()];
    section
        .lines()
        .filter(|l| l.contains("cargo xtask") && (is_cron(l) || l.starts_with("ExecStart=")))
        .map(str::to_owned)
        .collect()
}

/// A crontab line: five time fields, then the command.
fn is_cron(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields.len() > 5
        && fields[..5]
            .iter()
            .all(|f| f.chars().all(|c| c.is_ascii_digit() || "*/,-".contains(c)))
}

/// The task and options after `cargo xtask` in a scheduled command.
fn task_and_options(line: &str) -> Vec<String> {
    let after = &line[line.find("cargo xtask").unwrap() + "cargo xtask".len()..];
    after
        .split_whitespace()
        .take_while(|w| !w.starts_with('>') && !w.starts_with("2>") && *w != "|")
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_schedules_backups_with_a_cron_line_and_a_systemd_timer() {
    let commands = scheduled_commands();
    let cron = commands.iter().find(|l| is_cron(l)).expect("a cron line");
    let systemd = commands
        .iter()
        .find(|l| l.starts_with("ExecStart="))
        .expect("a systemd ExecStart line");
    // cron and systemd start from another folder with a short PATH: the line says where.
    assert!(cron.contains("cd /"), "cron: an absolute checkout: {cron}");
    assert!(
        cron.contains("PATH=") || cron.contains("/.cargo/bin/cargo"),
        "cron: cargo found: {cron}"
    );
    assert!(
        systemd.contains("ExecStart=/"),
        "systemd: an absolute program: {systemd}"
    );
    for line in [cron, systemd] {
        let words = task_and_options(line);
        assert_eq!(words.first().map(String::as_str), Some("backup"), "{line}");
        for option in ["--yes", "--json"] {
            assert!(words.iter().any(|w| w == option), "{option} in {line}");
        }
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for needle in ["WorkingDirectory=/", "OnCalendar=", "[Install]"] {
        assert!(readme.contains(needle), "the systemd units have {needle}");
    }
}

#[test]
fn the_running_bot_has_the_production_defaults_and_serves() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("harden");
    let deploy = project.xtask("first-deploy", &["--yes"]);
    assert!(deploy.status.success(), "{}", text(&deploy));

    let bot = project.bot_container();
    let problems = hardening_problems(&bot);
    assert!(problems.is_empty(), "{problems:#?}");
    // Enough for the bot at 10M users (the migration has a container of its own).
    assert!(
        bot["HostConfig"]["Memory"].as_i64().unwrap() >= 256 << 20,
        "{}",
        bot["HostConfig"]["Memory"]
    );
    // The heartbeat is written on the tmpfs: the bot is healthy, and the check passes now.
    assert_eq!(
        bot["State"]["Health"]["Status"], "healthy",
        "{}",
        bot["State"]
    );
    let id = bot["Id"].as_str().unwrap();
    let check = common::run("docker", &["exec", id, "/bot", "healthcheck"]);
    assert!(check.status.success(), "{}", text(&check));
    // The old runbook's by-hand command works after a deploy without exported variables:
    // the deploy wrote them to docker/.env, which Compose reads beside the compose file.
    let by_hand = std::process::Command::new("docker-compose")
        .args(["-f", "docker/docker-compose.prod.yml", "-p", &project.name])
        .args(["run", "--rm", "bot", "db", "status", "--json"])
        .current_dir(root())
        .env_remove("BOT_IMAGE")
        .env_remove("STANDIN_IMAGE")
        .env_remove("BOT_ENV_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(by_hand.status.success(), "{}", text(&by_hand));
    let status: Value = serde_json::from_slice(
        by_hand
            .stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"{"))
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", text(&by_hand)));
    assert_eq!(status["state"], "current", "{status}");
    let help = project.xtask("chat", &["/start"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Welcome"),
        "{}",
        text(&help)
    );

    // The README's scheduled backup, with this project's options, and without a terminal
    // (stdin is /dev/null): its container is hardened too (read-only, no capabilities) and
    // writes only its volumes.
    for line in scheduled_commands() {
        let words = task_and_options(&line);
        let options: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let backup = project.xtask(&words[0], &options);
        assert_eq!(backup.status.code(), Some(0), "{line}\n{}", text(&backup));
        let report: Value = serde_json::from_slice(&backup.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&backup)));
        assert!(report.is_object(), "{report}");
    }
    let backups = std::fs::read_dir(project.state_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "db")
        })
        .count();
    assert!(
        backups >= 1,
        "no backup in {}",
        project.state_dir().display()
    );
    // The bot still serves after the backups.
    assert_eq!(
        project.bot_container()["State"]["Health"]["Status"],
        "healthy"
    );
}
