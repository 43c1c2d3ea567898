//! Secrets in captured output, end to end on the real Docker engine: what Docker, Compose and a
//! failing bot print about the environment file is scrubbed before it reaches the screen, the
//! `--json` report or the deploy history; a malformed environment file is refused by line
//! number, never by content.
//!
//! These tests need a running Docker daemon and fail, saying so, when there is none.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Project, SERIAL, report, text, xtask};

/// The fake token: a real token's shape, recognisable anywhere.
const TOKEN: &str = "424242:SECRETsecretSECRETsecret";
/// Its secret part alone (what follows the colon).
const TOKEN_SECRET: &str = "SECRETsecretSECRETsecret";
/// Another secret of the environment file: a proxy password inside a URL.
const PROXY_PASSWORD: &str = "PROXYpass-e2e-7531";

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Every text the run left: its stdout, stderr, the report and the history file.
fn everything(outputs: &[&Output], state_dir: &Path) -> String {
    let mut all: Vec<String> = outputs.iter().map(|o| text(o)).collect();
    let history = state_dir.join("deploys.jsonl");
    all.push(format!(
        "--- {}\n{}",
        history.display(),
        std::fs::read_to_string(&history).unwrap_or_default()
    ));
    all.join("\n")
}

fn assert_no_secret(all: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !all.contains(secret),
            "{secret:?} was shown or stored:\n{all}"
        );
    }
}

#[test]
fn what_a_failing_bot_prints_about_the_environment_file_is_scrubbed_everywhere() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("secrets");
    let deploy = project.xtask("first-deploy", &["--yes"]);
    assert!(deploy.status.success(), "{}", text(&deploy));

    // A copy-paste slip: the token's secret part lands in ADMIN_IDS. The new bot refuses to
    // start and logs the value it refused (it redacts its whole token, not this part); the
    // deploy shows the bot's last log lines in its error and rolls back.
    let slip = write(
        &project.dir,
        "slip.env",
        &format!(
            "BOT_TOKEN={TOKEN}\nTELEGRAM_API_URL=http://telegram-standin:8081\nADMIN_IDS={TOKEN_SECRET}\nRUST_LOG=info\n"
        ),
    );
    let first = project.xtask(
        "prod-migrate",
        &["--yes", "--json", "--env-file", slip.to_str().unwrap()],
    );
    assert_eq!(first.status.code(), Some(1), "{}", text(&first));
    let first_report = report(&first);
    let error = first_report["error"].as_str().unwrap();
    assert!(
        error.contains("ADMIN_IDS") && error.contains("is not a Telegram user id"),
        "the bot's own words come through, so its log reached the error: {error}"
    );
    assert!(
        error.contains("<BOT_TOKEN>"),
        "the value is replaced by its variable's name: {error}"
    );

    // A proxy password in a URL the bot cannot parse: the bot prints the URL.
    let proxy = write(
        &project.dir,
        "proxy.env",
        &format!(
            "BOT_TOKEN={TOKEN}\nTELEGRAM_API_URL=http//relay:{PROXY_PASSWORD}@telegram-standin:8081\nRUST_LOG=info\n"
        ),
    );
    let second = project.xtask(
        "prod-migrate",
        &["--yes", "--json", "--env-file", proxy.to_str().unwrap()],
    );
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let second_error = report(&second)["error"].as_str().unwrap().to_owned();
    assert!(
        second_error.contains("is not a URL"),
        "the bot's own words come through: {second_error}"
    );

    let table = project.xtask("history", &[]);
    let json = project.xtask("history", &["--json"]);
    let all = everything(&[&first, &second, &table, &json], &project.state_dir());
    assert!(
        all.matches("is not a Telegram user id").count() >= 3,
        "the error was shown (stderr, report) and stored (history): {all}"
    );
    assert_no_secret(&all, &[TOKEN, TOKEN_SECRET, PROXY_PASSWORD]);
}

#[test]
fn a_malformed_environment_file_is_refused_by_line_number_never_by_content() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("badenv");
    // Line 3 is no KEY=VALUE: a value pasted without its name (what Compose v2 prints back in
    // its parse error). Compose 1.29 skips such a line with a warning.
    let bad = write(
        &project.dir,
        "bad.env",
        &format!(
            "# the bot's settings\nBOT_TOKEN={TOKEN}\n{PROXY_PASSWORD} and more\nRUST_LOG=info\n"
        ),
    );
    let output = xtask(&[
        "prod-migrate",
        "--project-name",
        &project.name,
        "--yes",
        "--json",
        "--env-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(4),
        "the machine is not ready: {}",
        text(&output)
    );
    let refused = report(&output);
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("line 3 of {}", bad.display())),
        "the line is named by its number: {error}"
    );
    assert!(error.contains("KEY=VALUE"), "the fix is named: {error}");
    let all = everything(&[&output], &project.state_dir());
    assert_no_secret(&all, &[TOKEN, TOKEN_SECRET, PROXY_PASSWORD]);
}
