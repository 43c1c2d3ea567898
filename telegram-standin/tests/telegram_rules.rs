//! Telegram's own rules, played over real HTTP: groups and their migration, message length,
//! the 409 of two pollers, rate limits, latency, offsets, and what each sent message records.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{call, control, post, start};
use serde_json::{Value, json};
use telegram_standin::{Chat, Config, Fault, IncomingMessage, Limits, Standin, client};

const CONFLICT: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

fn send(standin: &Standin, chat_id: i64, text: &str) -> (u16, Value) {
    call(
        standin,
        "sendMessage",
        json!({"chat_id": chat_id, "text": text}),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn update_ids(polled: &Value) -> Vec<i64> {
    polled["result"]
        .as_array()
        .unwrap_or_else(|| panic!("no updates in {polled}"))
        .iter()
        .map(|u| u["update_id"].as_i64().unwrap())
        .collect()
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_user_writes_in_a_group_and_the_bot_answers_there_as_the_chat_really_is() {
    let standin = start();
    let (status, _) = post(
        &standin,
        "/control/messages",
        json!({
            "user_id": 42, "text": "/start", "first_name": "Ann",
            "chat": {"id": -100123, "type": "supergroup", "title": "Team"},
        }),
    );
    assert_eq!(status, 200);
    standin.post_message(&IncomingMessage::new(43, "hi").in_chat(Chat::group(-55, "Old")));
    standin.post_message(&IncomingMessage::new(44, "private"));
    let (_, polled) = call(&standin, "getUpdates", json!({"timeout": 1}));
    let messages: Vec<&Value> = polled["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| &u["message"])
        .collect();
    assert_eq!(
        messages[0]["chat"],
        json!({"id": -100123, "type": "supergroup", "title": "Team"})
    );
    assert_eq!(
        (
            &messages[0]["from"]["id"],
            &messages[0]["from"]["first_name"]
        ),
        (&json!(42), &json!("Ann")),
        "from stays the user"
    );
    assert_eq!(
        messages[1]["chat"],
        json!({"id": -55, "type": "group", "title": "Old"})
    );
    assert_eq!(messages[2]["chat"]["type"], "private");
    assert_eq!(messages[2]["chat"]["id"], 44);

    let (_, answer) = send(&standin, -100123, "to the team");
    assert_eq!(
        answer["result"]["chat"],
        json!({"id": -100123, "type": "supergroup", "title": "Team"})
    );
    let (_, answer) = send(&standin, -777, "to a group no one wrote in");
    assert_eq!(
        (
            &answer["result"]["chat"]["type"],
            &answer["result"]["chat"]["title"]
        ),
        (&json!("group"), &json!("Group -777"))
    );
    let (_, answer) = send(&standin, 44, "private");
    assert_eq!(answer["result"]["chat"]["type"], "private");

    let (_, sent) = control(
        &standin,
        "GET",
        "/control/sent?after=0&chat_id=-100123",
        None,
    );
    let sent = sent.as_array().unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (&sent[0]["chat_id"], &sent[0]["text"]),
        (&json!(-100123), &json!("to the team"))
    );
    assert_eq!(
        standin
            .wait_for_sent(0, Some(-777), Duration::ZERO)
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        ["to a group no one wrote in"]
    );

    let (status, refused) = post(
        &standin,
        "/control/messages",
        json!({"user_id": 42, "text": "x", "chat": {"id": 5, "type": "group"}}),
    );
    assert_eq!(status, 400);
    assert!(
        refused["error"].as_str().unwrap().contains("negative"),
        "{refused}"
    );
}

#[test]
fn a_group_upgraded_to_a_supergroup_refuses_messages_as_telegram_does() {
    let standin = start();
    standin.post_message(&IncomingMessage::new(42, "hi").in_chat(Chat::group(-123, "Club")));
    client::migrate_chat(&standin.url(), -123, -100123).unwrap();

    let (status, body) = send(&standin, -123, "to the old group");
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({
            "ok": false,
            "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a supergroup chat",
            "parameters": {"migrate_to_chat_id": -100123},
        })
    );
    let (status, body) = send(&standin, -100123, "to the supergroup");
    assert_eq!(status, 200);
    assert_eq!(
        body["result"]["chat"],
        json!({"id": -100123, "type": "supergroup", "title": "Club"}),
        "the supergroup keeps the group's title"
    );
    assert_eq!(
        standin.sent().iter().map(|m| m.chat_id).collect::<Vec<_>>(),
        [-100123],
        "the refused message was not sent"
    );

    let (status, refused) = post(
        &standin,
        "/control/messages",
        json!({"user_id": 42, "text": "x", "chat": {"id": -123, "type": "group"}}),
    );
    assert_eq!(status, 400);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("post the message in -100123"),
        "{refused}"
    );
    let error = client::migrate_chat(&standin.url(), -123, -100999).unwrap_err();
    assert!(
        error.to_string().contains("already upgraded to -100123"),
        "{error}"
    );
    for wrong in [
        json!({"from": 5, "to": -100}),
        json!({"from": -5}),
        json!(null),
    ] {
        let (status, body) = post(&standin, "/control/chats/migrate", wrong.clone());
        assert_eq!(status, 400, "{wrong} is refused: {body}");
    }

    // In-process too, and a chat id given as a string is the same chat.
    standin.migrate_chat(-7, -1007);
    let (status, body) = call(
        &standin,
        "sendMessage",
        json!({"chat_id": "-7", "text": "x"}),
    );
    assert_eq!(
        (status, &body["parameters"]["migrate_to_chat_id"]),
        (400, &json!(-1007))
    );
}

#[test]
fn a_message_text_is_neither_empty_nor_over_4096_characters() {
    let standin = start();
    // Two bytes each: a byte count would refuse the longest text Telegram takes.
    let longest = "é".repeat(4096);
    let (status, body) = send(&standin, 42, &longest);
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(&standin, 42, &format!("{longest}e"));
    assert_eq!(
        (status, &body["description"]),
        (400, &json!("Bad Request: message is too long"))
    );
    for empty in ["", " \n "] {
        let (status, body) = send(&standin, 42, empty);
        assert_eq!(
            (status, &body["description"], &body["error_code"]),
            (
                400,
                &json!("Bad Request: message text is empty"),
                &json!(400)
            ),
            "{empty:?}"
        );
    }
    assert_eq!(standin.sent().len(), 1, "only the longest fitting text");
}

#[test]
fn a_newer_get_updates_ends_the_held_one_with_a_409_and_proceeds() {
    let standin = start();
    let (held, newer) = std::thread::scope(|scope| {
        let held = scope.spawn(|| {
            let started = Instant::now();
            let answer = call(&standin, "getUpdates", json!({"timeout": 8}));
            (answer, started.elapsed())
        });
        wait_until("the first poll is held", || {
            standin.stats().polls_in_flight == 1
        });
        let newer = call(&standin, "getUpdates", json!({"timeout": 0}));
        (held.join().unwrap(), newer)
    });
    let ((status, body), took) = held;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 409, "description": CONFLICT})
    );
    assert!(
        took < Duration::from_secs(6),
        "answered at once, not at its timeout: {took:?}"
    );
    assert_eq!(newer, (200, json!({"ok": true, "result": []})));
    let stats = standin.stats();
    assert_eq!((stats.conflicts, stats.polls_in_flight), (1, 0));

    // One poller at a time is never refused, and the updates were kept for it.
    standin.post_message(&IncomingMessage::new(42, "hi"));
    let (status, polled) = call(&standin, "getUpdates", json!({"timeout": 1}));
    assert_eq!((status, update_ids(&polled)), (200, vec![1]));
    assert_eq!(standin.stats().conflicts, 1);
}

#[test]
fn a_conflict_fault_answers_409_for_its_number_of_calls() {
    let standin = start();
    let (status, _) = post(
        &standin,
        "/control/faults",
        json!({"method": "getUpdates", "kind": "conflict", "times": 2}),
    );
    assert_eq!(status, 200);
    for _ in 0..2 {
        let (status, body) = call(&standin, "getUpdates", json!({"timeout": 0}));
        assert_eq!((status, &body["description"]), (409, &json!(CONFLICT)));
    }
    let (status, _) = call(&standin, "getUpdates", json!({"timeout": 0}));
    assert_eq!(status, 200, "used up after two calls");

    standin.inject(Fault::conflict().times(None));
    for _ in 0..3 {
        assert_eq!(call(&standin, "getUpdates", json!({})).0, 409);
    }
    assert_eq!(call(&standin, "getMe", json!({})).0, 200, "only getUpdates");
    standin.clear_faults();
    assert_eq!(call(&standin, "getUpdates", json!({})).0, 200);

    let stats = standin.stats();
    assert_eq!(stats.conflicts, 5);
    assert!(
        stats
            .faults_applied
            .iter()
            .all(|f| f.method == "getupdates"),
        "{:?}",
        stats.faults_applied
    );
    let (status, body) = post(
        &standin,
        "/control/faults",
        json!({"method": "sendMessage", "kind": "conflict"}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("getUpdates"),
        "{body}"
    );
}

#[test]
fn rate_limits_are_off_by_default_and_answer_429_as_telegram_does_when_on() {
    let standin = start();
    for _ in 0..5 {
        assert_eq!(send(&standin, 42, "free").0, 200);
    }
    assert_eq!(standin.limits(), None);
    let (_, limits) = control(&standin, "GET", "/control/limits", None);
    assert_eq!(limits, json!(null));

    client::set_limits(
        &standin.url(),
        Some(&Limits {
            per_chat_per_sec: 1,
            per_group_per_min: 2,
            overall_per_sec: 30,
        }),
    )
    .unwrap();
    // A group's window is a minute long: no timing can let the third through.
    assert_eq!(send(&standin, -100123, "1").0, 200);
    assert_eq!(send(&standin, -100123, "2").0, 200);
    let (status, body) = send(&standin, -100123, "3");
    assert_eq!(status, 429, "{body}");
    let retry_after = body["parameters"]["retry_after"].as_u64().unwrap();
    assert!((1..=60).contains(&retry_after), "{body}");
    assert_eq!(
        body,
        json!({
            "ok": false,
            "error_code": 429,
            "description": format!("Too Many Requests: retry after {retry_after}"),
            "parameters": {"retry_after": retry_after},
        })
    );
    // A private chat's window is a second: the second message is refused if it came within it.
    let started = Instant::now();
    assert_eq!(send(&standin, 7, "first").0, 200);
    let (status, body) = send(&standin, 7, "second");
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            (status, &body["parameters"]["retry_after"]),
            (429, &json!(1)),
            "{body}"
        );
    }
    let refused_7 = u64::from(status == 429);
    // A fault's 429 counts too.
    standin.inject(Fault::too_many_requests("sendMessage", 3));
    assert_eq!(send(&standin, 9, "faulted").0, 429);

    let stats = standin.stats();
    assert_eq!(stats.rate_limited, 2 + refused_7);
    assert_eq!(stats.rate_limited_by_chat.get(&-100123), Some(&1));
    assert_eq!(stats.rate_limited_by_chat.get(&9), Some(&1));
    let (_, over_http) = control(&standin, "GET", "/control/stats", None);
    assert_eq!(over_http["rate_limited_by_chat"]["-100123"], 1);
    assert_eq!(
        standin
            .sent()
            .iter()
            .filter(|m| m.chat_id == -100123)
            .count(),
        2,
        "a refused message is not sent"
    );

    // Over HTTP: missing fields are Telegram's, 0 is refused, null turns them off.
    let (status, limits) = post(&standin, "/control/limits", json!({}));
    assert_eq!(
        (status, limits),
        (
            200,
            json!({"per_chat_per_sec": 1, "per_group_per_min": 20, "overall_per_sec": 30})
        )
    );
    assert_eq!(standin.limits(), Some(Limits::default()));
    let (status, body) = post(&standin, "/control/limits", json!({"overall_per_sec": 0}));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("null"), "{body}");
    client::set_limits(&standin.url(), None).unwrap();
    assert_eq!(standin.limits(), None);
    assert_eq!(send(&standin, -100123, "off again").0, 200);
}

#[test]
fn the_overall_limit_counts_every_chat() {
    let standin = Standin::start(
        "127.0.0.1:0",
        Config {
            limits: Some(Limits {
                overall_per_sec: 3,
                ..Limits::default()
            }),
            ..Config::default()
        },
    )
    .unwrap();
    let started = Instant::now();
    let statuses: Vec<u16> = (1..=4).map(|chat| send(&standin, chat, "hi").0).collect();
    if started.elapsed() < Duration::from_millis(900) {
        assert_eq!(statuses, [200, 200, 200, 429]);
        assert_eq!(standin.stats().rate_limited_by_chat.get(&4), Some(&1));
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "each chat's first message");
}

#[test]
fn latency_delays_bot_api_calls_but_not_the_control_api() {
    let standin = Standin::start(
        "127.0.0.1:0",
        Config {
            latency: Duration::from_millis(300),
            ..Config::default()
        },
    )
    .unwrap();
    let timed = |what: &dyn Fn()| {
        let started = Instant::now();
        what();
        started.elapsed()
    };
    let took = timed(&|| assert_eq!(call(&standin, "getMe", json!({})).0, 200));
    assert!(took >= Duration::from_millis(300), "{took:?}");

    client::set_latency(&standin.url(), Duration::from_millis(1500)).unwrap();
    assert_eq!(standin.latency(), Duration::from_millis(1500));
    let (_, latency) = control(&standin, "GET", "/control/latency", None);
    assert_eq!(latency, json!({"ms": 1500}));
    let before = now_ms();
    let took = timed(&|| assert_eq!(call(&standin, "getMe", json!({})).0, 200));
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    let arrived = *standin.stats().calls_at_ms["getme"].last().unwrap();
    assert!(
        arrived < before + 1000,
        "the arrival is recorded before the wait: {arrived} vs {before}"
    );
    let took = timed(&|| assert_eq!(control(&standin, "GET", "/control/health", None).0, 200));
    assert!(took < Duration::from_millis(1500), "{took:?}");

    let (status, _) = post(&standin, "/control/latency", json!({"ms": -1}));
    assert_eq!(status, 400);
    standin.set_latency(Duration::ZERO);
    let (_, latency) = control(&standin, "GET", "/control/latency", None);
    assert_eq!(latency, json!({"ms": 0}));
}

#[test]
fn a_negative_offset_keeps_only_the_last_updates() {
    let standin = start();
    for text in ["1", "2", "3", "4", "5"] {
        standin.post_message(&IncomingMessage::new(42, text));
    }
    assert_eq!(standin.stats().pending_updates, 5);
    let (_, polled) = call(&standin, "getUpdates", json!({"offset": -2}));
    assert_eq!(update_ids(&polled), [4, 5]);
    assert_eq!(
        standin.stats().pending_updates,
        2,
        "the earlier were forgotten"
    );
    let (_, polled) = call(&standin, "getUpdates", json!({"offset": 0}));
    assert_eq!(update_ids(&polled), [4, 5]);
    let (_, polled) = call(&standin, "getUpdates", json!({"offset": -9}));
    assert_eq!(update_ids(&polled), [4, 5], "fewer than asked for: all");
    call(&standin, "getUpdates", json!({"offset": 6}));
    let (_, stats) = control(&standin, "GET", "/control/stats", None);
    assert_eq!(stats["pending_updates"], 0);
}

#[test]
fn a_lower_offset_after_a_confirmation_does_not_bring_confirmed_updates_back() {
    let standin = start();
    for text in ["1", "2", "3"] {
        standin.post_message(&IncomingMessage::new(42, text));
    }
    let (_, polled) = call(&standin, "getUpdates", json!({"offset": 3}));
    assert_eq!(update_ids(&polled), [3]);
    assert_eq!(standin.stats().pending_updates, 1);
    for lower in [1, 0] {
        let (_, polled) = call(&standin, "getUpdates", json!({"offset": lower}));
        assert_eq!(update_ids(&polled), [3], "offset {lower}");
    }
    let (_, info) = call(&standin, "getWebhookInfo", json!({}));
    assert_eq!(info["result"]["pending_update_count"], 1);
}

#[test]
fn a_sent_message_records_what_it_replies_to_and_when_it_arrived() {
    let standin = start();
    let before = now_ms();
    for params in [
        json!({"chat_id": 42, "text": "new", "reply_parameters": {"message_id": 7}}),
        json!({"chat_id": 42, "text": "old", "reply_to_message_id": 8}),
        json!({"chat_id": 42, "text": "none"}),
    ] {
        assert_eq!(call(&standin, "sendMessage", params).0, 200);
    }
    let after = now_ms();
    let sent = standin.sent();
    assert_eq!(
        sent.iter()
            .map(|m| m.reply_to_message_id)
            .collect::<Vec<_>>(),
        [Some(7), Some(8), None]
    );
    assert!(
        sent.iter().all(|m| (before..=after).contains(&m.at_ms)),
        "{sent:?} between {before} and {after}"
    );
    let (_, over_http) = control(&standin, "GET", "/control/sent?after=0", None);
    assert_eq!(over_http[0]["reply_to_message_id"], 7);
    assert_eq!(over_http[2]["reply_to_message_id"], json!(null));
    assert_eq!(over_http[0]["at_ms"], sent[0].at_ms);
}

/// A `serve` process, killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_takes_the_latency_and_telegram_limits_flags_and_refuses_others() {
    let mut served = Served(
        Command::new(env!("CARGO_BIN_EXE_telegram-standin"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--latency-ms",
                "250",
                "--telegram-limits",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(served.0.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let base = format!("http://{addr}");
    assert_eq!(
        client::control(&base, "GET", "/control/limits", None).unwrap(),
        json!(Limits::default())
    );
    assert_eq!(
        client::control(&base, "GET", "/control/latency", None).unwrap(),
        json!({"ms": 250})
    );
    drop(served);

    let output = Command::new(env!("CARGO_BIN_EXE_telegram-standin"))
        .args(["serve", "--listen", "127.0.0.1:0", "--telegram-limit"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--telegram-limit"), "{stderr}");
}
