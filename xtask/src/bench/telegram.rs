//! The bot under Telegram's rules: replies per second through the stand-in with its latency and
//! Telegram's limits on; how long other chats wait while one waits out a 429; /stats at 10M
//! users; and duplicate answers during a deploy under load. The first three run the static
//! release binaries as processes on this machine; the last one runs the demo stack in Docker, as
//! the deploy section does.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use xshell::{Cmd, Shell, cmd};

use super::engine::{bot_db, sql, sqlite3};
use super::stack::{self, Demo, Tools};
use super::*;
use crate::clock::unix_ms;
use crate::compose::Stack;
use crate::process;

/// The Compose project of the deploy run: its own, so that another benchmark's stack is left alone.
const PROJECT: &str = "tgbot-bench-telegram";
/// The token the stand-in accepts (its default) and the bot is given.
const TOKEN: &str = "123456:DEMO-TOKEN";
/// The latency of every Bot API call in the first two runs, in ms.
const LATENCY_MS: u64 = 50;
/// The `retry_after` of the 429 one chat meets in the waiting run, in seconds.
const RETRY_AFTER_SECS: u64 = 15;
/// The waiting run's target: no other chat waits this long.
const WORST_DELAY: Duration = Duration::from_secs(2);
/// What the issue reported of the old bot: every chat waited this long behind one 429.
const ISSUE_WORST: &str = "14.5 s";
/// The waiting run's pace: one user's /help every this long (5 a second).
const WAITING_EVERY: Duration = Duration::from_millis(200);
/// The /stats target, at the largest size.
const STATS_TARGET: Duration = Duration::from_millis(50);
/// Timed /stats (and /help) per run.
const STATS_SAMPLES: usize = 5;
/// The admin who asks for /stats (named in ADMIN_IDS; no generated user has this id).
const ADMIN: i64 = 900_000_001;
/// The first user id of the replies run, the waiting run and the deploy run's loader.
const BURST_FIRST: i64 = 1_000_000;
const WAITING_FIRST: i64 = 2_000_000;
const LOAD_FIRST: i64 = 3_000_000;
/// Part of the kept databases' names: bump it when the generator changes.
const GENERATOR: u32 = 1;
/// The deploy run's loader: one message every this long, from its users in turn.
const LOAD_EVERY: Duration = Duration::from_millis(100);
/// The deploy run's users: each writes every 4 s (15 a minute), under the bot's per-user limit
/// of 20 a minute, so that no message is dropped for its sender's pace.
const LOAD_USERS: i64 = 40;
/// How long the deploy run waits for the last answers after the loader stopped.
const ANSWERS_WITHIN: Duration = Duration::from_secs(90);
/// The bot's settings this benchmark sets or leaves at their defaults: none is inherited.
const BOT_SETTINGS: [&str; 7] = [
    "ADMIN_IDS",
    "BOT_RATE_LIMITS",
    "BOT_USER_MESSAGES_PER_MINUTE",
    "BOT_STOP_GRACE_SECS",
    "BOT_SCHEMA_WAIT_SECS",
    "COMMAND_LOG_DAYS",
    "RUST_LOG",
];

/// What this run of the section measures.
struct Plan {
    /// Users sending /start at once in the replies run.
    burst_users: usize,
    /// Users sending /help one after another in the waiting run.
    waiting_users: usize,
    /// Users in the /stats database.
    stats_users: u64,
    /// Users in the deploy run's database (one of the deploy section's kept databases).
    deploy_users: u64,
    /// A smoke run: its numbers mean nothing.
    quick: bool,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let (burst_users, waiting_users, stats_users, deploy_users) = match quick {
            true => (50, 20, 100_000, 10_000),
            false => (300, 50, 10_000_000, 100_000),
        };
        Plan {
            burst_users,
            waiting_users,
            stats_users,
            deploy_users,
            quick,
        }
    }
}

/// Runs the section. `quick`: a smoke run with fewer users, whose numbers mean nothing.
pub fn run(sh: &Shell, quick: bool) -> anyhow::Result<Section> {
    let clock = Clock::start();
    let plan = Plan::new(quick);
    let dir = work_dir().join("telegram");
    std::fs::create_dir_all(&dir)?;
    let (bot, standin) = release_binaries(sh)?;
    let local = Local {
        sh,
        bot,
        standin,
        dir,
    };
    let mut rows = vec![
        local.burst(plan.burst_users)?,
        local.waiting(plan.waiting_users)?,
    ];
    rows.extend(local.stats(plan.stats_users)?);
    rows.push(deploy_under_load(sh, &local.bot, plan.deploy_users));
    let compose = Stack::new(sh, PROJECT, true).map(|s| s.flavour.describe());
    let compose = compose.unwrap_or_else(|_| "Compose".into());
    Ok(Section {
        title: "Bot under Telegram's rules".into(),
        method: method(&plan, &compose, &clock),
        rows,
    })
}

/// The programs and the folder of the runs on this machine.
struct Local<'a> {
    sh: &'a Shell,
    /// The static release `bot` (a copy).
    bot: PathBuf,
    /// The static release `telegram-standin` (a copy).
    standin: PathBuf,
    /// `target/bench/telegram`.
    dir: PathBuf,
}

/// A stand-in and a bot on this machine; both stopped when dropped (the bot first).
struct Pair {
    bot: Running,
    _standin: Running,
    control: Control,
}

impl Local<'_> {
    /// A new folder for a run, and its database's path.
    fn folder(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let folder = self.dir.join(format!("run-{name}"));
        if folder.exists() {
            std::fs::remove_dir_all(&folder)
                .with_context(|| format!("cannot empty {}", folder.display()))?;
        }
        std::fs::create_dir_all(&folder)?;
        Ok((folder.clone(), folder.join("bot.db")))
    }

    /// Starts `telegram-standin serve` with `serve` on a free local port, then `bot run` on `db`
    /// against it with `env` (other settings at their defaults), and waits for the bot's long poll.
    fn start(
        &self,
        folder: &Path,
        db: &Path,
        serve: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Pair> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let (sh, standin, bot, listen) = (self.sh, &self.standin, &self.bot, addr.to_string());
        let command = cmd!(sh, "{standin} serve --listen {listen} {serve...}")
            .env("STANDIN_TOKEN", TOKEN)
            .env_remove("STANDIN_MAX_LONG_POLL_MS");
        let standin = Running::spawn("telegram-standin", command, &folder.join("standin.log"))?;
        let control = Control(addr);
        let every = Duration::from_millis(50);
        if !wait_until(Duration::from_secs(10), every, || {
            standin.alive()?;
            Ok(control.get("/control/health").is_ok())
        })? {
            bail!("the stand-in did not answer on {addr} within 10 s");
        }
        let command = BOT_SETTINGS
            .iter()
            .fold(cmd!(sh, "{bot} run"), Cmd::env_remove)
            .env("BOT_TOKEN", TOKEN)
            .env("TELEGRAM_API_URL", format!("http://{addr}"))
            .env("DATABASE_PATH", db)
            .env("HEARTBEAT_PATH", folder.join("heartbeat"))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let bot = Running::spawn("bot", command, &folder.join("bot.log"))?;
        // Its first getUpdates returns at once; the second is a long poll, held.
        if !wait_until(Duration::from_secs(60), every, || {
            bot.alive()?;
            Ok(control.get("/control/stats")?["calls"]["getupdates"].as_u64() >= Some(2))
        })? {
            bail!(
                "the bot did not poll the stand-in within 60 s:\n{}",
                bot.log_tail()
            );
        }
        Ok(Pair {
            bot,
            _standin: standin,
            control,
        })
    }

    /// A run `name` on a new database, against a stand-in with 50 ms latency and Telegram's
    /// limits: the pair and the database.
    fn limited(&self, name: &str) -> anyhow::Result<(Pair, PathBuf)> {
        let (folder, db) = self.folder(name)?;
        bot_db(&self.bot, &db, &["upgrade"])?;
        let latency = LATENCY_MS.to_string();
        let serve = ["--latency-ms", &latency, "--telegram-limits"];
        Ok((self.start(&folder, &db, &serve, &[])?, db))
    }

    /// `users` distinct users send /start at once, with 50 ms latency and Telegram's limits.
    fn burst(&self, users: usize) -> anyhow::Result<Measurement> {
        eprintln!("telegram: replies per second, {users} users sending /start at once");
        let (pair, db) = self.limited("replies")?;
        let ids: Vec<i64> = (0..users as i64).map(|i| BURST_FIRST + i).collect();
        let (posted, _, sent) = pair.control.start_all(&ids, Duration::from_secs(300))?;
        pair.bot.alive()?;
        let answers = sent.iter().filter(|m| ids.contains(&m.chat_id));
        let last = answers.map(|m| m.at_ms).max().unwrap_or(posted);
        let rate_limited = pair.control.rate_limited()?;
        drop(pair);
        fresh(&db);
        let answered = answered_chats(&sent, &ids);
        let took = handled_after(posted, last, LATENCY_MS);
        eprintln!(
            "telegram: {answered} of {users} answered in {}, {rate_limited} 429s",
            show(took)
        );
        let per_second = answered as f64 / took.as_secs_f64().max(0.001);
        Ok(Measurement {
            name: format!(
                "replies per second through the stand-in, 50 ms latency and Telegram's limits on: {users} users send /start at once"
            ),
            ours: format!(
                "{per_second:.1}/s ({answered} of {users} answered in {}); 429s from the stand-in: {rate_limited}",
                show(took)
            ),
            baseline: "Telegram's limit: 30 messages/s overall, 1/s per chat".into(),
            target: "(measured); every user answered, no 429".into(),
            met: answered == users && rate_limited == 0,
        })
    }

    /// A chat's answer meets a 429 (retry_after 15 s) while `users` others send /help, 5 a second.
    fn waiting(&self, users: usize) -> anyhow::Result<Measurement> {
        eprintln!("telegram: a chat waits out a 429 while {users} others send /help");
        let (pair, db) = self.limited("waiting")?;
        let control = pair.control;
        control.post(
            "/control/faults",
            &json!({"method": "sendMessage", "kind": "too_many_requests", "retry_after": RETRY_AFTER_SECS, "times": 1}),
        )?;
        let first = WAITING_FIRST;
        let first_posted = unix_ms();
        let before = control.post_message(&json!({"user_id": first, "text": "/help"}))?;
        if !wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            pair.bot.alive()?;
            Ok(control.rate_limited()? > 0)
        })? {
            bail!("the first chat's answer did not meet the 429 within 10 s");
        }
        let mut posted = Vec::new();
        let started = Instant::now();
        for i in 0..users {
            sleep_until(started + WAITING_EVERY * i as u32);
            let id = first + 1 + i as i64;
            let at = unix_ms();
            control.post_message(&json!({"user_id": id, "text": "/help"}))?;
            posted.push((id, at));
        }
        let chats: Vec<i64> = std::iter::once(first)
            .chain(posted.iter().map(|(id, _)| *id))
            .collect();
        let sent =
            control.wait_sent(before, Duration::from_secs(RETRY_AFTER_SECS + 60), |sent| {
                answered_chats(sent, &chats) == chats.len()
            })?;
        pair.bot.alive()?;
        let answer_at = |chat: i64| {
            sent.iter()
                .filter(|m| m.chat_id == chat)
                .map(|m| m.at_ms)
                .min()
        };
        // Each other user's delay (of those answered).
        let delay =
            |&(id, at): &(i64, u64)| answer_at(id).map(|a| handled_after(at, a, LATENCY_MS));
        let delays: Vec<Duration> = posted.iter().filter_map(delay).collect();
        let first_delay = answer_at(first).map(|a| handled_after(first_posted, a, LATENCY_MS));
        let rate_limited = control.rate_limited()?;
        drop(pair);
        fresh(&db);
        let (worst, answered) = (delays.iter().max().copied(), delays.len());
        eprintln!(
            "telegram: {answered} of {users} answered, worst {}, the chat with the 429 after {}",
            worst.map_or("-".into(), show),
            first_delay.map_or("-".into(), show)
        );
        Ok(Measurement {
            name: format!(
                "worst delay of an answer while another chat waits out a 429 (retry_after {RETRY_AFTER_SECS} s), 50 ms latency and Telegram's limits on"
            ),
            ours: match worst {
                Some(worst) => format!(
                    "worst {}, median {} ({answered} of {users} users answered; 429s from the stand-in: {rate_limited})",
                    show(worst),
                    show(median(delays))
                ),
                None => format!("none of {users} users answered"),
            },
            baseline: format!(
                "the chat that met the 429: answered after {}; the issue: {ISSUE_WORST} for every chat",
                first_delay.map_or("never".into(), show)
            ),
            target: format!("worst under {}", show(WORST_DELAY)),
            met: answered == users && worst.is_some_and(|w| w < WORST_DELAY),
        })
    }

    /// /stats and /help of an admin, on a fresh copy of the kept database of `users` users,
    /// upgraded to the head.
    fn stats(&self, users: u64) -> anyhow::Result<[Measurement; 2]> {
        let at = label(users);
        eprintln!("telegram: /stats at {at} users");
        let (kept, made) = self.dataset(users)?;
        let bytes = std::fs::metadata(&kept)?.len();
        let (folder, db) = self.folder("stats")?;
        stack::warm_copy_whole(&kept, &db)?;
        let result = self.stats_on(&folder, &db, users);
        fresh(&db);
        let (upgrade, stats, help) = result?;
        let shown = |samples: &[Duration]| samples.iter().map(|d| show(*d)).collect::<Vec<_>>();
        eprintln!(
            "telegram: upgrade to the head {}; /stats {:?}; /help {:?}",
            show(upgrade),
            shown(&stats),
            shown(&help)
        );
        Ok([
            Measurement {
                name: format!(
                    "/stats at {at} users ({}), from posting to the answer",
                    size(bytes)
                ),
                ours: spread(&stats),
                baseline: format!(
                    "/help, the same way: {} (median of {})",
                    show(median(help.clone())),
                    help.len()
                ),
                target: format!("under {}", show(STATS_TARGET)),
                met: median(stats) < STATS_TARGET,
            },
            Measurement {
                name: format!(
                    "`bot db upgrade` from revision 4 to {} at {at} users (revision 5 fills the /stats summaries)",
                    migrations::head()
                ),
                ours: show(upgrade),
                baseline: made.map_or(String::new(), |made| {
                    format!("making the database took {}", long(made))
                }),
                target: "(measured)".into(),
                met: true,
            },
        ])
    }

    fn stats_on(
        &self,
        folder: &Path,
        db: &Path,
        users: u64,
    ) -> anyhow::Result<(Duration, Vec<Duration>, Vec<Duration>)> {
        let upgrade = bot_db(&self.bot, db, &["upgrade"])?;
        expect_current(self.sh, &self.bot, db, "after `bot db upgrade` the copy")?;
        let admin = ADMIN.to_string();
        let env = [("ADMIN_IDS", admin.as_str()), ("BOT_RATE_LIMITS", "off")];
        let pair = self.start(folder, db, &[], &env)?;
        let control = pair.control;
        // Untimed: the admin registers, then one of each warms the bot.
        control.ask(ADMIN, "/start")?;
        control.ask(ADMIN, "/help")?;
        control.ask(ADMIN, "/stats")?;
        let (mut stats, mut help) = (Vec::new(), Vec::new());
        let mut answer = String::new();
        for _ in 0..STATS_SAMPLES {
            help.push(control.ask(ADMIN, "/help")?.1);
            let (text, took) = control.ask(ADMIN, "/stats")?;
            stats.push(took);
            answer = text;
        }
        pair.bot.alive()?;
        drop(pair);
        // Every generated user and the admin.
        let counted = answer.lines().find_map(|l| l.strip_prefix("Users: "));
        let counted = counted.and_then(|n| n.trim().parse::<u64>().ok());
        if counted != Some(users + 1) {
            bail!(
                "/stats counted {counted:?} users, not {} (its answer: {answer:?})",
                users + 1
            );
        }
        Ok((upgrade, stats, help))
    }

    /// The kept database of `users` users at revision 4 (see [`kept`]), and how long making
    /// it took when this run made it.
    fn dataset(&self, users: u64) -> anyhow::Result<(PathBuf, Option<Duration>)> {
        let sh = self.sh;
        let name = format!("revision-4-{}-g{GENERATOR}.db", label(users));
        let path = self.dir.join(name);
        let sqlite3 = sqlite3(sh)?;
        let made = kept(sh, &self.bot, &path, 4, "telegram", |partial| {
            bot_db(&self.bot, partial, &["upgrade"])?;
            bot_db(&self.bot, partial, &["downgrade", "--to", "4"])?;
            sql(sh, &sqlite3, partial, &fill_script(users, unix_ms() / 1000))
        })?;
        Ok((path, made))
    }
}

/// The `sqlite3` script that fills `users` and `command_log` of a revision-4 database with
/// `users` users, `now` being the time in seconds since the Unix epoch: users registered
/// evenly over two years (ids in that order), each last seen within the last 30 days (not
/// before registering), one command each within the last 90 days (logged in time order). The
/// indexes are dropped before and made again after, as the schema has them.
fn fill_script(users: u64, now: u64) -> String {
    const DAY: u64 = 86_400;
    let (two_years, month, quarter) = (730 * DAY, 30 * DAY, 90 * DAY);
    let first = now - two_years;
    let created = format!("{first} + id * {two_years} / {users}");
    format!(
        "PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         PRAGMA cache_size = -1048576;
         BEGIN;
         DROP INDEX ix_users_last_seen_at;
         DROP INDEX ix_command_log_user_id;
         DROP INDEX ix_command_log_used_at;
         WITH RECURSIVE n(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM n WHERE id < {users}),
         t(id, created, seen) AS (SELECT id, {created}, {now} - (id * 7919) % {month} FROM n)
         INSERT INTO users (id, telegram_id, username, first_name, last_name, is_admin, created_at, language_code, last_seen_at)
         SELECT id, 100000000 + id, 'user' || id, 'First' || id,
                CASE WHEN id % 4 = 0 THEN NULL ELSE 'Last' || id END, id % 1000 = 0,
                datetime(created, 'unixepoch'),
                CASE id % 3 WHEN 0 THEN 'en' WHEN 1 THEN 'de' ELSE NULL END,
                datetime(max(created, seen), 'unixepoch')
         FROM t;
         INSERT INTO command_log (user_id, command, used_at)
         SELECT id, CASE id % 4 WHEN 0 THEN 'start' WHEN 1 THEN 'help' WHEN 2 THEN 'me' ELSE 'stats' END,
                datetime(used, 'unixepoch')
         FROM (SELECT id, max({created}, {now} - (id * 104729) % {quarter}) AS used FROM users)
         ORDER BY used;
         CREATE INDEX ix_users_last_seen_at ON users (last_seen_at);
         CREATE INDEX ix_command_log_user_id ON command_log (user_id);
         CREATE INDEX ix_command_log_used_at ON command_log (used_at);
         COMMIT;
         PRAGMA journal_mode = WAL;
"
    )
}

/// The deploy run: the old release serving the deploy section's kept database of `users`
/// users at revision 3 in the demo stack, messages posted all along, `prod-full-update` to the
/// head meanwhile; then every answer counted.
fn deploy_under_load(sh: &Shell, bot: &Path, users: u64) -> Measurement {
    eprintln!(
        "telegram: duplicates during prod-full-update under load, at {} users (Docker, project {PROJECT})",
        label(users)
    );
    let measured = Tools::new(bot, PROJECT).and_then(|tools| {
        let data = stack::dataset(sh, bot, &tools.dir, users)?;
        let (_, row) = tools.on_stack(sh, |demo| deploy_run(demo, &data, users))?;
        Ok(row)
    });
    measured.unwrap_or_else(|e| {
        eprintln!("telegram: the deploy run failed: {e:#}");
        let reason = format!("{e:#}");
        let reason = reason.lines().next().unwrap_or("").replace('|', "/");
        Measurement {
            name: "duplicate answers during `prod-full-update` under load".into(),
            ours: format!("not measured: {reason}"),
            baseline: String::new(),
            target: "0 duplicates, none unanswered".into(),
            met: false,
        }
    })
}

fn deploy_run(demo: Demo, data: &Path, users: u64) -> anyhow::Result<Measurement> {
    let Demo(sh, stack, tools) = demo;
    // One deploy first, without load: it builds the new images, the stand-in's too, which the
    // measured deploy would otherwise replace (and with it the stand-in's record of answers).
    let old_image = demo.prepare(data, "telegram")?;
    demo.reset(&old_image, data)?;
    let standin = stack::standin(sh, stack)?;
    let control = Control(container_addr(sh, &standin.0)?);
    control.get("/control/health").with_context(|| {
        format!(
            "the stand-in's control API is not reachable from this machine at its container's address {}",
            control.0
        )
    })?;

    // Every user registers first.
    let ids: Vec<i64> = (0..LOAD_USERS).map(|i| LOAD_FIRST + i).collect();
    let (_, before, sent) = control.start_all(&ids, Duration::from_secs(60))?;
    if answered_chats(&sent, &ids) != ids.len() {
        bail!("the old bot did not answer every user's /start within 60 s");
    }
    let mut posted: Vec<(i64, String)> = ids.iter().map(|&id| (id, "start".into())).collect();

    // The loader, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || -> anyhow::Result<Vec<(i64, String, u64)>> {
            let mut out = Vec::new();
            let started = Instant::now();
            let mut step: u32 = 0;
            while !stop.load(Ordering::SeqCst) {
                sleep_until(started + LOAD_EVERY * step);
                let id = LOAD_FIRST + i64::from(step) % LOAD_USERS;
                let name = format!("d{step}");
                let at = unix_ms();
                control.post_message(&json!({"user_id": id, "text": format!("/{name}")}))?;
                out.push((id, name, at));
                step += 1;
            }
            Ok(out)
        })
    };
    std::thread::sleep(stack::SETTLE);
    eprintln!("telegram: prod-full-update under load");
    let from = unix_ms();
    let started = Instant::now();
    let deployed = tools.run(sh, &["prod-full-update", "--json"]);
    let deployed = deployed.and_then(|out| stack::deployed(&out));
    let took = started.elapsed();
    let to = unix_ms();
    if deployed.is_ok() {
        // The loader goes on while the new bot serves.
        let polled = stack::wait_for_calls(sh, stack, 3);
        std::thread::sleep(stack::SETTLE);
        polled?;
    }
    stop.store(true, Ordering::SeqCst);
    let joined = loader.join();
    let loaded = joined.map_err(|_| anyhow::anyhow!("the loader panicked"))?;
    let report = deployed?;
    let loaded = loaded?;
    if stack::standin(sh, stack)? != standin {
        bail!("the stand-in restarted during the run, so its record of answers is cut");
    }
    // Messages posted while `prod-full-update` ran.
    let during = loaded.iter().filter(|m| (from..=to).contains(&m.2)).count();
    posted.extend(loaded.into_iter().map(|(id, name, _)| (id, name)));

    // Every answer, matched to its message by its text.
    let expected: HashSet<(i64, String)> = posted.iter().cloned().collect();
    let done = |sent: &[Sent]| {
        let answered: HashSet<(i64, String)> =
            sent.iter().filter_map(|m| answer_key(m, &ids)).collect();
        expected.iter().all(|k| answered.contains(k))
    };
    let mut sent = control.wait_sent(before, ANSWERS_WITHIN, done)?;
    // A late second answer has a moment to show.
    std::thread::sleep(stack::SETTLE);
    let seen_up_to = sent.iter().map(|m| m.seq).max().unwrap_or(before);
    sent.extend(control.sent(seen_up_to, None, Duration::ZERO)?);
    let mut counts: HashMap<(i64, String), usize> = HashMap::new();
    // Answers that are neither a message's own nor a second one (an apology, say).
    let mut others = 0;
    for message in sent.iter().filter(|m| ids.contains(&m.chat_id)) {
        match answer_key(message, &ids).filter(|k| expected.contains(k)) {
            Some(key) => *counts.entry(key).or_default() += 1,
            None => others += 1,
        }
    }
    let messages = posted.len();
    let duplicates: usize = counts.values().map(|n| n.saturating_sub(1)).sum();
    let unanswered = expected.iter().filter(|k| !counts.contains_key(*k)).count();
    eprintln!(
        "telegram: {messages} messages, {during} during the deploy: {duplicates} duplicates, {unanswered} unanswered, {others} other answers"
    );
    let healthy = report["downtime_seconds"].as_f64();
    let healthy = healthy.map_or(String::new(), |s| {
        format!(", downtime until healthy {s:.2} s")
    });
    Ok(Measurement {
        name: format!(
            "duplicate answers during `prod-full-update` under load (revision 3 to {}, {} users)",
            migrations::head(),
            label(users)
        ),
        ours: format!(
            "{duplicates} duplicates; {unanswered} of {messages} messages unanswered ({during} posted during the deploy); {others} other answers"
        ),
        baseline: format!("the deploy took {}{healthy}", show(took)),
        target: "0 duplicates, none unanswered".into(),
        met: duplicates == 0 && unanswered == 0 && others == 0,
    })
}

/// Which message an answer in one of `chats` answers: ("start") for a /start, the command's
/// name for an unknown command (the bot names it in its answer).
fn answer_key(message: &Sent, chats: &[i64]) -> Option<(i64, String)> {
    if !chats.contains(&message.chat_id) {
        return None;
    }
    if message.text.starts_with("Welcome") {
        return Some((message.chat_id, "start".into()));
    }
    let rest = message.text.strip_prefix("I don't know /")?;
    let name = rest.split(['.', ' ']).next()?;
    Some((message.chat_id, name.to_owned()))
}

/// A container's address on its Compose network, with the stand-in's port.
fn container_addr(sh: &Shell, id: &str) -> anyhow::Result<SocketAddr> {
    let format = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}";
    let inspect = cmd!(sh, "docker inspect --format {format} {id}");
    let out = process::run(inspect, "finding the stand-in's address")?;
    let ip = out.stdout.split_whitespace().next();
    let ip = ip.context("the stand-in's container has no address")?;
    format!("{ip}:8081")
        .parse()
        .with_context(|| format!("docker gave the stand-in the address {ip:?}"))
}

/// A program this benchmark started, its output in a log: in its own process group (a signal
/// to xtask stops it), stopped with its group when dropped.
struct Running {
    name: &'static str,
    started: process::Started,
    log: PathBuf,
}

impl Running {
    fn spawn(name: &'static str, command: Cmd<'_>, log: &Path) -> anyhow::Result<Running> {
        let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let out = file.try_clone()?;
        let started = process::Argv::from(command)
            .start_with(|e| e.stdin_null().stdout_file(out).stderr_file(file))
            .with_context(|| format!("cannot start the {name}"))?;
        let log = log.to_owned();
        Ok(Running { name, started, log })
    }

    /// Fails when it has exited.
    fn alive(&self) -> anyhow::Result<()> {
        if let Some(output) = self.started.try_wait() {
            let status = output.status;
            bail!("the {} exited ({status}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        process::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 20)
    }
}

/// A message the bot sent, as the stand-in's control API tells it.
#[derive(Debug, Clone, Deserialize)]
struct Sent {
    seq: u64,
    chat_id: i64,
    text: String,
    /// When its `sendMessage` arrived, in ms since the Unix epoch.
    at_ms: u64,
}

/// The stand-in's control API at an address.
#[derive(Debug, Clone, Copy)]
struct Control(SocketAddr);

impl Control {
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None, Duration::from_secs(10))
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("POST", path, Some(body), Duration::from_secs(10))
    }

    /// The 429s the stand-in has answered.
    fn rate_limited(&self) -> anyhow::Result<u64> {
        let stats = self.get("/control/stats")?;
        Ok(stats["rate_limited"].as_u64().unwrap_or(0))
    }

    /// Queues one user's message; returns the sequence number of the last message sent before it.
    fn post_message(&self, message: &Value) -> anyhow::Result<u64> {
        let answer = self.post("/control/messages", message)?;
        answer["sent_before"].as_u64().context("no sent_before")
    }

    /// `users` send /start at once, queued in one batch (one `getUpdates` can see them all):
    /// when they were posted (ms), the sequence number of the last message sent before, and the
    /// answers, read until each user has one or `timeout` has passed.
    fn start_all(&self, users: &[i64], timeout: Duration) -> anyhow::Result<(u64, u64, Vec<Sent>)> {
        let messages: Vec<Value> = users
            .iter()
            .map(|&id| json!({"user_id": id, "text": "/start", "first_name": format!("Load {id}")}))
            .collect();
        let posted = unix_ms();
        let answer = self.post("/control/messages/batch", &json!(messages))?;
        let before = answer["sent_before"].as_u64().context("no sent_before")?;
        let done = |sent: &[Sent]| answered_chats(sent, users) == users.len();
        Ok((posted, before, self.wait_sent(before, timeout, done)?))
    }

    /// The messages sent after sequence number `after` (to `chat`), waiting up to `wait` for one.
    fn sent(&self, after: u64, chat: Option<i64>, wait: Duration) -> anyhow::Result<Vec<Sent>> {
        let mut path = format!("/control/sent?after={after}&wait_ms={}", wait.as_millis());
        if let Some(chat) = chat {
            path.push_str(&format!("&chat_id={chat}"));
        }
        let answer = self.call("GET", &path, None, wait + Duration::from_secs(10))?;
        serde_json::from_value(answer).context("the stand-in's sent messages")
    }

    /// The messages sent after `after`, read as they come until `done` holds or `timeout` passes.
    fn wait_sent(
        &self,
        after: u64,
        timeout: Duration,
        done: impl Fn(&[Sent]) -> bool,
    ) -> anyhow::Result<Vec<Sent>> {
        let deadline = Instant::now() + timeout;
        let mut all: Vec<Sent> = Vec::new();
        let mut seen = after;
        while !done(&all) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            for message in self.sent(seen, None, remaining.min(Duration::from_secs(5)))? {
                seen = seen.max(message.seq);
                all.push(message);
            }
        }
        Ok(all)
    }

    /// `user` sends `text` in their private chat; returns the bot's answer and the time from
    /// just before posting to its `sendMessage`'s arrival (no latency in this run).
    fn ask(&self, user: i64, text: &str) -> anyhow::Result<(String, Duration)> {
        let posted = unix_ms();
        let before = self.post_message(&json!({"user_id": user, "text": text}))?;
        let answers = self.sent(before, Some(user), Duration::from_secs(30))?;
        let answer = answers.into_iter().next();
        let answer = answer.with_context(|| format!("no answer to {text} within 30 s"))?;
        Ok((answer.text, handled_after(posted, answer.at_ms, 0)))
    }

    /// One HTTP/1.1 request; the JSON answer of a 200, else an error with the stand-in's words.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let addr = self.0;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("cannot reach the stand-in at {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        let read = stream.read_to_string(&mut response);
        read.with_context(|| format!("{method} {path}: no answer from the stand-in"))?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("{method} {path}: no HTTP header in the answer"))?;
        let status: Option<u16> = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        let status =
            status.with_context(|| format!("{method} {path}: no HTTP status in the answer"))?;
        if status != 200 {
            bail!("{method} {path}: the stand-in answered {status}: {body}");
        }
        serde_json::from_str(body).with_context(|| format!("{method} {path}: not JSON: {body}"))
    }
}

/// How many of `chats` got at least one answer in `sent`.
fn answered_chats(sent: &[Sent], chats: &[i64]) -> usize {
    let answered: HashSet<i64> = sent.iter().map(|m| m.chat_id).collect();
    chats.iter().filter(|c| answered.contains(c)).count()
}

/// From `posted` (ms) until the stand-in handled an answer whose `sendMessage` arrived at
/// `arrived` (ms) and was held `latency_ms` first.
fn handled_after(posted: u64, arrived: u64, latency_ms: u64) -> Duration {
    Duration::from_millis((arrived + latency_ms).saturating_sub(posted))
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn method(plan: &Plan, compose: &str, clock: &Clock) -> String {
    let smoke = if plan.quick {
        "**A smoke run (`--quick`): fewer users, /stats at 100k users, the deploy at 10k. It checks that the code runs; its numbers mean nothing.**\n\n"
    } else {
        ""
    };
    format!(
        "{smoke}The first rows run the static release binaries as processes on this machine, without Docker: `telegram-standin serve` on a free local port, and `bot run` against it with its defaults unless said (its outgoing messages within Telegram's limits, each chat's answers by a worker of its own, 20 messages a minute per user), on a database made by `bot db upgrade` in `target/bench/telegram/`. The stand-in notes when each `sendMessage` arrives; a delay runs from just before the message was posted to the control API (this machine's clock, to the millisecond) until the stand-in handled the answer: its `sendMessage`'s arrival plus the latency every call is held.\n\n\
         - Replies per second: the stand-in with `--latency-ms {LATENCY_MS} --telegram-limits` (every Bot API call held {LATENCY_MS} ms; a `sendMessage` over 1 a second per chat or 30 a second overall answered 429 with `retry_after`, as Telegram answers it). {burst} distinct users send /start in one batch (`/control/messages/batch`), timed until the last one's answer. The 429s are the stand-in's count (`rate_limited` of `/control/stats`).\n\
         - A chat waiting out a 429: the same stand-in, with one 429 (`retry_after` {RETRY_AFTER_SECS} s) put on the next `sendMessage` (`/control/faults`). A user sends /help and the answer meets the 429; once it has, {waiting} other users send /help one after another, one every {every} ms, while that chat waits. The row gives the worst and the median of their delays, beside the waiting chat's own; the stand-in's count of 429s includes the one put there.\n\
         - /stats: a database of {stats} users, made once and kept in `target/bench/telegram/`: `bot db upgrade` on a new file, `bot db downgrade --to 4`, then the `sqlite3` shell fills `users` (registered over two years, last seen within 30 days) and `command_log` (one row per user within 90 days) from recursive CTEs in one transaction (journal off, `synchronous=OFF`, the schema's indexes dropped first and made again). Each run takes a fresh copy of it, written through the page cache and flushed, and upgrades the copy with `bot db upgrade` (timed: revision 5 fills the /stats summaries from the rows). The bot then serves it, with `ADMIN_IDS` naming the admin and `BOT_RATE_LIMITS=off`, against a stand-in without latency or limits. The admin sends /start, one /help and one /stats untimed, then /help and /stats in turn, {STATS_SAMPLES} of each; a cell is the median. Both write the command log with the update's id, so /help shows the bot's own time and /stats adds the reading of the numbers. The /stats answer must count every user.\n\
         - Duplicates during a deploy: the demo stack in Docker ({compose}, project `{PROJECT}`), started as the deploy section starts each run: the old release (schema head 3) serving the deploy section's kept database of {deploy} users at revision 3 (after one `prod-full-update` without load, which builds the new images, so that the measured one replaces only the bot). {LOAD_USERS} users send /start; then a loader on this machine posts one message every {load_every} ms to the stand-in's control API (at its container's address), from the users in turn, each writing every {per_user} s, under the per-user limit. Each message is a command the bot does not know, named uniquely (`/d17`): the bot logs it as it logs /help (with the update's id) and answers with its name, so every answer is matched to its message. {settle} later `cargo xtask prod-full-update --json` migrates to revision {head} and replaces the bot; the loader goes on until the new bot polls, and {settle} more; then the answers are awaited (up to {within} s) and counted: a duplicate is a second answer to one message, unanswered a message without one, other answers are neither (an apology).\n\n\
         {}.",
        clock.summary(""),
        burst = plan.burst_users,
        waiting = plan.waiting_users,
        every = WAITING_EVERY.as_millis(),
        stats = label(plan.stats_users),
        deploy = label(plan.deploy_users),
        load_every = LOAD_EVERY.as_millis(),
        per_user = (LOAD_EVERY * LOAD_USERS as u32).as_secs(),
        settle = show(stack::SETTLE),
        head = migrations::head(),
        within = ANSWERS_WITHIN.as_secs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(chat_id: i64, text: &str) -> Sent {
        Sent {
            seq: 1,
            chat_id,
            text: text.into(),
            at_ms: 0,
        }
    }

    #[test]
    fn answers_are_matched_to_their_messages_by_their_text() {
        let key = |chat, text| answer_key(&sent(chat, text), &[7, 8]);
        let unknown = "I don't know /d17. Send /help for the list of commands.";
        assert_eq!(key(7, unknown), Some((7, "d17".into())));
        let welcome = "Welcome, Load 8! You are registered.";
        assert_eq!(key(8, welcome), Some((8, "start".into())));
        assert_eq!(key(8, "Sorry, something went wrong"), None);
        assert_eq!(key(9, "Welcome back"), None);
    }

    #[test]
    fn a_delay_counts_the_latency_the_answer_was_held() {
        assert_eq!(handled_after(1000, 1200, 50), Duration::from_millis(250));
        assert_eq!(handled_after(1000, 900, 0), Duration::ZERO);
    }
}
