//! Third adversary of issue 10's newest changes: pending_updates, the turn at the overall limit
//! taken before handling, and sendMessage read by the bot itself.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sandbox::{Sandbox, TOKEN, wait_until};
use rusqlite::Connection;
use telegram_standin::{Chat, IncomingMessage, Limits};

/// A user-data marker that must never reach a log line.
const SECRET_NAME: &str = "Zebulon-PRIVATE-42";

/// What the fake Bot API answers to a sendMessage: (status, body).
type SendAnswer = Box<dyn Fn(usize) -> (u16, String) + Send + Sync>;

/// A minimal Bot API that serves one /me update from user 42 and answers each sendMessage as
/// `send_answer(nth call)` says; records the sendMessage bodies it got.
struct FakeApi {
    url: String,
    sends: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FakeApi {
    fn start(text: &'static str, send_answer: SendAnswer) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sends = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(send_answer);
        {
            let sends = Arc::clone(&sends);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (sends, served, calls, answer) = (
                        Arc::clone(&sends),
                        Arc::clone(&served),
                        Arc::clone(&calls),
                        Arc::clone(&answer),
                    );
                    std::thread::spawn(move || {
                        serve_connection(stream, text, &sends, &served, &calls, &**answer)
                    });
                }
            });
        }
        FakeApi { url, sends, stop }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn serve_connection(
    stream: TcpStream,
    text: &str,
    sends: &Mutex<Vec<String>>,
    served: &AtomicBool,
    calls: &AtomicUsize,
    answer: &(dyn Fn(usize) -> (u16, String) + Send + Sync),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let method = path.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
        let (status, answer_body) = match method.as_str() {
            "getme" => (
                200,
                r#"{"ok":true,"result":{"id":123456,"is_bot":true,"first_name":"Demo Bot","username":"demo_bot","can_join_groups":true,"can_read_all_group_messages":false,"supports_inline_queries":false,"can_connect_to_business":false,"has_main_web_app":false}}"#.to_owned(),
            ),
            "getupdates" => {
                if served.swap(true, Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(300));
                    (200, r#"{"ok":true,"result":[]}"#.to_owned())
                } else {
                    let update = serde_json::json!({"ok": true, "result": [{"update_id": 7, "message": {
                        "message_id": 1,
                        "from": {"id": 42, "is_bot": false, "first_name": SECRET_NAME, "username": "zeb42"},
                        "chat": {"id": 42, "type": "private", "first_name": SECRET_NAME, "username": "zeb42"},
                        "date": 1_700_000_000,
                        "text": text,
                        "entities": [{"type": "bot_command", "offset": 0, "length": text.split_whitespace().next().unwrap().len()}],
                    }}]});
                    (200, update.to_string())
                }
            }
            "sendmessage" => {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                sends.lock().unwrap().push(format!("{path}\n{body}"));
                answer(n)
            }
            _ => (200, r#"{"ok":true,"result":true}"#.to_owned()),
        };
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            429 => "Too Many Requests",
            _ => "Other",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{answer_body}",
            answer_body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn ok_send() -> String {
    r#"{"ok":true,"result":{"message_id":5,"date":1700000000,"chat":{"id":42,"type":"private","first_name":"x"},"text":"ok"}}"#.to_owned()
}

/// Runs `bot run` against `api` at `rust_log` for `for_how_long`, then SIGTERM; the log.
fn run_against(
    sandbox: &Sandbox,
    api: &FakeApi,
    rust_log: &str,
    until: impl Fn() -> bool,
) -> String {
    run_at(sandbox, &api.url, rust_log, until)
}

fn run_at(sandbox: &Sandbox, url: &str, rust_log: &str, until: impl Fn() -> bool) -> String {
    sandbox.upgrade();
    let log = sandbox.dir.join(format!("fake-{}.log", rust_log.len()));
    let mut child = sandbox
        .command(&[], TOKEN)
        .env("TELEGRAM_API_URL", url)
        .env("RUST_LOG", rust_log)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !until() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    std::fs::read_to_string(&log).unwrap()
}

/// Telegram refuses /me's answer with a description that has no colon and echoes what it got
/// (user data, the token). Promise: neither the token nor Telegram's raw answer is in any log
/// line, even at RUST_LOG=trace.
///
/// Fixed; it was a BREAK. The log (RUST_LOG=trace) had: "WARN bot::replies: sendMessage to chat 42 failed,
/// answer dropped (Telegram refused it): Telegram answered 403 Forbidden: Forbidden -
/// Zebulon-PRIVATE-42 (user 42) blocked bot123456": the user's data and the token's bot id (cut
/// only by the token's own colon). No other line (reqwest, hyper at trace) had the token.
/// Cause: replies.rs Outbox::send_once logs the description up to its first colon, neither
/// redacted nor bounded: a description without a colon is logged whole.
#[test]
fn a_refusal_echoing_user_data_and_the_token_without_a_colon_is_never_logged() {
    let sandbox = Sandbox::new("adv3-echo");
    let api = FakeApi::start(
        "/me",
        Box::new(|_| {
            let description = format!("Forbidden - {SECRET_NAME} (user 42) blocked bot{TOKEN}");
            (
                403,
                serde_json::json!({"ok": false, "error_code": 403, "description": description})
                    .to_string(),
            )
        }),
    );
    let sends = Arc::clone(&api.sends);
    let log = run_against(&sandbox, &api, "trace", || {
        !sends.lock().unwrap().is_empty()
    });
    assert!(
        !api.sends.lock().unwrap().is_empty(),
        "the bot answered /me: {log}"
    );
    let leaks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(TOKEN) || l.contains("TEST-TOKEN") || l.contains(SECRET_NAME))
        .collect();
    assert!(
        leaks.is_empty(),
        "log lines with the token or user data: {leaks:#?}"
    );
}

/// A 429 whose answer has no parameters.retry_after (a proxy's, or Telegram's shape changing):
/// surely not delivered, so the answer must not be lost.
///
/// Fixed; it was a BREAK. "sendMessage to chat 42 failed, answer dropped (Telegram refused it): Telegram
/// answered 429 Too Many Requests: Too Many Requests"; sent once, never again. Cause:
/// replies.rs Outbox::send_once maps a 429 without parameters.retry_after to Failure::Refused
/// (status.is_client_error()) instead of a retry after a backoff.
#[test]
fn a_429_without_retry_after_is_retried_not_dropped() {
    let sandbox = Sandbox::new("adv3-429-bare");
    let api = FakeApi::start(
        "/help",
        Box::new(|n| {
            if n == 0 {
                (
                    429,
                    r#"{"ok":false,"error_code":429,"description":"Too Many Requests"}"#.to_owned(),
                )
            } else {
                (200, ok_send())
            }
        }),
    );
    let sends = Arc::clone(&api.sends);
    let log = run_against(&sandbox, &api, "info", || sends.lock().unwrap().len() >= 2);
    let sent = api.sends.lock().unwrap().len();
    assert_eq!(
        sent, 2,
        "the /help answer is sent again after the 429: {log}"
    );
}

/// The most sendMessage calls the stand-in saw within any 1000 ms.
fn busiest_second(sandbox: &Sandbox) -> usize {
    let at = sandbox
        .standin
        .stats()
        .calls_at_ms
        .get("sendmessage")
        .cloned()
        .unwrap_or_default();
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|&&t| t < at[i] + 1000).count())
        .max()
        .unwrap_or(0)
}

/// A burst of /start from 120 new users while another process holds the write lock for 450 ms
/// of every second (a backup, `bot db`): the handlings that waited for the lock all finish at
/// its release and go out on the overall-limit slots they took before it (still "fresh", under
/// 500 ms), together with the slots taken after it. Promise: within 30/s overall, no 429.
///
/// Fixed; it was a BREAK. Every user answered, but the stand-in answered 15 (second run: 20) 429s and saw 41
/// sendMessage calls within one second. Cause: replies.rs Outbox::send takes the slot
/// Outbox::wait_turn took as good while under FRESH_SLOT (500 ms): handlings held up to 500 ms
/// by the lock all send at its release on their old slots, together with the slots the limiter
/// hands out after it, so one second can hold 1.5 s worth of slots (about 41).
#[test]
fn a_burst_handled_slowly_under_a_recurring_lock_stays_within_30_a_second() {
    let sandbox = Sandbox::upgraded("adv3-bunch");
    sandbox.standin.set_limits(Some(Limits::default()));
    let _bot = sandbox.start_bot();
    let messages: Vec<IncomingMessage> = (0..120)
        .map(|i| IncomingMessage::new(5000 + i, "/start"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let locker = {
        let db = sandbox.database();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let conn = Connection::open(db).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            while !stop.load(Ordering::SeqCst) {
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                std::thread::sleep(Duration::from_millis(450));
                conn.execute_batch("COMMIT").unwrap();
                std::thread::sleep(Duration::from_millis(550));
            }
        })
    };
    let after = sandbox.standin.post_messages(&messages);
    let sent = sandbox
        .standin
        .wait_for_sent_count(after, 120, Duration::from_secs(90));
    stop.store(true, Ordering::SeqCst);
    locker.join().unwrap();
    let stats = sandbox.standin.stats();
    assert_eq!(sent.len(), 120, "every user answered");
    assert_eq!(
        (stats.rate_limited, busiest_second(&sandbox)),
        (0, busiest_second(&sandbox).min(30)),
        "429s answered, and the most sendMessage calls in one second"
    );
}

/// 150 known users' /help at once (over 90: the offset passes them, saved first); once they are
/// saved another process holds the write lock (a backup), so the known users' last-seen and
/// command log are not written ("answering anyway", recorded later); kill -9 while it holds.
/// Promise: after the restart, every /help answered exactly once.
///
/// BREAK. Answered twice: [7029, 7080, 7098, 7105, 7136] (7 answered "anyway" under the lock);
/// the second start: "answering 148 update(s) the last run fetched, saved and did not answer".
/// Cause: chats.rs answer() sends with Record::Later when commands.rs (store.seen, best effort)
/// cannot write under the lock, and handled.rs Recorder cannot write the id before the kill;
/// polling.rs answer_saved_updates then takes the saved rows not in handled_updates as
/// unanswered and answers them again.
#[test]
#[ignore = "known, left: a message whose best-effort write failed under another process's lock is answered and recorded later; a kill -9 before the lock goes answers it again"]
fn a_crash_while_saved_updates_are_answered_under_a_lock_answers_none_twice() {
    let sandbox = Sandbox::upgraded("adv3-saved-lock");
    sandbox.sql(
        "WITH RECURSIVE n(i) AS (SELECT 7000 UNION ALL SELECT i + 1 FROM n WHERE i < 7149)
         INSERT INTO users (telegram_id, first_name, last_seen_at) SELECT i, 'u' || i, CURRENT_TIMESTAMP FROM n;",
    );
    sandbox.standin.set_limits(Some(Limits::default()));
    let mut first = sandbox.start_bot();
    let users: Vec<i64> = (7000..7150).collect();
    let batch: Vec<IncomingMessage> = users
        .iter()
        .map(|u| IncomingMessage::new(*u, "/help"))
        .collect();
    let after = sandbox.standin.post_messages(&batch);
    wait_until(
        Duration::from_secs(20),
        || {
            Connection::open(sandbox.database())
                .and_then(|c| {
                    c.query_row("SELECT count(*) FROM pending_updates", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .unwrap_or(0)
                > 0
        },
        "the passed updates are saved",
    );
    let lock = sandbox.write_lock_with_busy_timeout();
    let under_lock = sandbox.standin.sent().len();
    wait_until(
        Duration::from_secs(30),
        || sandbox.standin.sent().len() >= under_lock + 5,
        "some /help answered while the lock is held",
    );
    first.crash();
    let first_log = first.log();
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let (second_log, twice, never) = sandbox.next_bot_answers_each(after, &users, 40, 3);
    let answering_anyway = first_log.matches("answering anyway").count();
    assert!(
        twice.is_empty() && never.is_empty(),
        "answered twice: {twice:?}; never answered: {never:?}; {answering_anyway} answered without a write under the lock\nsecond:\n{}",
        second_log
            .lines()
            .filter(|l| !l.contains("answering anyway"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Held. TELEGRAM_API_URL with a path prefix (a reverse proxy's): sendMessage goes under the
/// prefix, as getUpdates does.
///
/// Held (under 1 s).
#[test]
fn an_api_url_with_a_path_prefix_takes_the_answer_under_the_prefix() {
    let sandbox = Sandbox::new("adv3-prefix");
    let api = FakeApi::start("/help", Box::new(|_| (200, ok_send())));
    let sends = Arc::clone(&api.sends);
    let url = format!("{}/tg/proxy", api.url);
    let log = run_at(&sandbox, &url, "info", || !sends.lock().unwrap().is_empty());
    let sends = api.sends.lock().unwrap().clone();
    assert_eq!(sends.len(), 1, "{log}");
    assert!(
        sends[0].starts_with(&format!("/tg/proxy/bot{TOKEN}/sendMessage\n")),
        "{sends:?}"
    );
}

/// A group becomes a supergroup while 12 of its /help wait to be answered, and 12 more /help
/// come in the supergroup: the old group's answers are resent to the supergroup by the old
/// group's worker, the new ones by the supergroup's. Promise: 20 a minute per group, no 429.
///
/// BREAK. All 24 delivered, but 1 429 for the supergroup -100555 (more than 20 in 60 s).
/// Cause: replies.rs Outbox::send follows migrate_to_chat_id with the old group's worker's Pace;
/// the supergroup's own worker (chats.rs work) has another Pace, so two workers send to the
/// supergroup, each at 3.3 s.
#[test]
#[ignore = "known, left: answers that follow a group's move to its supergroup keep the old group's pace, not the supergroup worker's (one 429 in 24 answers, then retried)"]
fn answers_moved_to_a_supergroup_keep_its_20_a_minute() {
    let sandbox = Sandbox::upgraded("adv3-migrate-pace");
    sandbox.standin.set_limits(Some(Limits::default()));
    let _bot = sandbox.start_bot();
    let old: Vec<IncomingMessage> = (0..12)
        .map(|i| IncomingMessage::new(8000 + i, "/help").in_chat(Chat::group(-555, "Old")))
        .collect();
    let after = sandbox.standin.post_messages(&old);
    sandbox.standin.migrate_chat(-555, -100555);
    let new: Vec<IncomingMessage> = (0..12)
        .map(|i| IncomingMessage::new(8100 + i, "/help").in_chat(Chat::supergroup(-100555, "Old")))
        .collect();
    sandbox.standin.post_messages(&new);
    let sent = sandbox
        .standin
        .wait_for_sent_count(after, 24, Duration::from_secs(100));
    let stats = sandbox.standin.stats();
    assert_eq!(
        (
            sent.len(),
            stats
                .rate_limited_by_chat
                .get(&-100555)
                .copied()
                .unwrap_or(0)
        ),
        (24, 0),
        "answers delivered, and 429s for the supergroup"
    );
}

/// Telegram answers /help's sendMessage 502 five times in a row (an outage of some 15 s):
/// surely not delivered each time. Promise: none lost when Telegram surely did not deliver.
///
/// Fixed; it was a BREAK (perhaps by design). Attempts at 0, 1, 3, 7, 15 s, then "sendMessage to chat 31 failed,
/// answer dropped (after 5 attempts): Telegram answered 502 Bad Gateway": a 15 s outage loses
/// the answer, though Telegram surely did not deliver it (neither kept nor retried later).
/// Cause: replies.rs Outbox::send (SEND_ATTEMPTS = 5, then dropped).
#[test]
fn an_answer_refused_with_5xx_through_a_short_outage_is_not_lost() {
    let sandbox = Sandbox::upgraded("adv3-5xx-outage");
    let bot = sandbox.start_bot();
    sandbox
        .standin
        .inject(telegram_standin::Fault::server_error("sendMessage", 502).times(Some(5)));
    let after = sandbox
        .standin
        .post_message(&IncomingMessage::new(31, "/help"));
    let sent = sandbox
        .standin
        .wait_for_sent(after, Some(31), Duration::from_secs(25));
    let (_, _, log) = bot.terminate();
    assert_eq!(
        sent.len(),
        1,
        "the /help answer after 5 refusals: {}",
        log.lines()
            .filter(|l| l.contains("sendMessage"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Telegram answers 200 with a body that is not JSON: maybe delivered, so not sent again; and
/// the raw body is not in the log.
///
/// Held (about 3 s).
#[test]
fn a_200_answer_that_is_not_json_is_not_sent_again() {
    let sandbox = Sandbox::upgraded("adv3-garbled");
    let bot = sandbox.start_bot();
    sandbox
        .standin
        .inject(telegram_standin::Fault::garbled_answer("sendMessage"));
    sandbox
        .standin
        .post_message(&IncomingMessage::new(32, "/help"));
    wait_until(
        Duration::from_secs(10),
        || sandbox.send_calls() >= 1,
        "the answer is sent",
    );
    std::thread::sleep(Duration::from_secs(3));
    let calls = sandbox
        .standin
        .stats()
        .calls
        .get("sendmessage")
        .copied()
        .unwrap_or(0);
    let (_, _, log) = bot.terminate();
    assert_eq!(calls, 1, "{log}");
}

/// Chat 41's answer meets a 429 asking to wait 20 s; chat 42's /help, posted right after,
/// must not wait for it (the turn at the overall limit is taken before handling).
///
/// Held (under 1 s).
#[test]
fn a_chat_waiting_out_a_429_holds_up_no_other_chats_new_message() {
    let sandbox = Sandbox::upgraded("adv3-429-other");
    sandbox.standin.set_limits(Some(Limits::default()));
    let bot = sandbox.start_bot();
    sandbox
        .standin
        .inject(telegram_standin::Fault::too_many_requests(
            "sendMessage",
            20,
        ));
    sandbox
        .standin
        .post_message(&IncomingMessage::new(41, "/help"));
    wait_until(
        Duration::from_secs(10),
        || sandbox.standin.stats().rate_limited >= 1,
        "chat 41 meets the 429",
    );
    let started = Instant::now();
    let after = sandbox
        .standin
        .post_message(&IncomingMessage::new(42, "/help"));
    let sent = sandbox
        .standin
        .wait_for_sent(after, Some(42), Duration::from_secs(10));
    let took = started.elapsed();
    drop(bot);
    assert!(
        sent.len() == 1 && took < Duration::from_secs(3),
        "{sent:?} after {took:?}"
    );
}

/// SIGTERM (grace 1 s) in a burst of 60 new users' /start while another process holds the write
/// lock for 3 s: the registrations waiting on the lock are cut off by the end of the grace.
/// Promise: after the restart every user gets exactly one answer (none lost, none twice).
///
/// Fixed; it was a BREAK, both runs: never answered [6038], then [6022]; nobody answered twice. The first bot:
/// "the 50 being answered get up to 1s"; the second start passes the update over as "handled
/// before". Cause: chats.rs Chats::finish aborts a worker in the middle of commands::answer,
/// but the registration it queued on the store's writer thread (store.rs Store::register via
/// writer.run) still commits once the lock goes, handled id included; the answer was not yet in
/// Shared::sending, so nothing is kept for the next start.
#[test]
fn a_stop_while_registrations_wait_on_a_lock_loses_no_answer() {
    let sandbox = Sandbox::upgraded("adv3-stop-lock");
    sandbox.standin.set_limits(Some(Limits::default()));
    let first = sandbox.start_bot_with(&[("BOT_STOP_GRACE_SECS", "1")]);
    let users: Vec<i64> = (6000..6060).collect();
    let batch: Vec<IncomingMessage> = users
        .iter()
        .map(|u| IncomingMessage::new(*u, "/start"))
        .collect();
    let after = sandbox.standin.post_messages(&batch);
    sandbox
        .standin
        .wait_for_sent_count(after, 10, Duration::from_secs(20));
    let lock = sandbox.write_lock_with_busy_timeout();
    std::thread::sleep(Duration::from_millis(300));
    let stopper = std::thread::spawn(move || first.terminate());
    std::thread::sleep(Duration::from_secs(3));
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let (_, _, first_log) = stopper.join().unwrap();
    let (second_log, twice, never) = sandbox.next_bot_answers_each(after, &users, 30, 2);
    assert!(
        twice.is_empty() && never.is_empty(),
        "answered twice: {twice:?}; never answered: {never:?}\nfirst:\n{}\nsecond:\n{}",
        first_log
            .lines()
            .filter(|l| !l.contains("TRACE"))
            .collect::<Vec<_>>()
            .join("\n"),
        second_log
            .lines()
            .filter(|l| l.contains("handled before")
                || l.contains("answering")
                || l.contains("WARN"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
