//! The stand-in over real HTTP, as the bot and the `chat` command see it.

mod common;

use std::time::{Duration, Instant};

use common::{call, call_as, control, load, post, start, token};
use serde_json::{Value, json};
use telegram_standin::{Fault, FaultKind, IncomingMessage, Standin, client};

#[test]
fn methods_answer_in_any_case_wrapped_as_telegram_does() {
    let standin = start();
    for method in ["getMe", "GetMe", "getme"] {
        let (status, body) = call(&standin, method, json!({}));
        assert_eq!(status, 200);
        assert_eq!(body["ok"], true);
        assert_eq!(body["result"]["username"], "demo_bot");
        assert_eq!(body["result"]["has_main_web_app"], false);
    }
    assert_eq!(standin.stats().calls["getme"], 3);
}

#[test]
fn a_wrong_token_gets_401_and_an_unknown_method_404_never_5xx() {
    let standin = start();
    let (status, body) = call_as(&standin, "1:wrong", "getMe", json!({}));
    assert_eq!(
        (
            status,
            body["error_code"].as_u64(),
            body["description"].as_str()
        ),
        (401, Some(401), Some("Unauthorized"))
    );
    let (status, body) = call(&standin, "launchRocket", json!({}));
    assert_eq!((status, body["ok"].as_bool()), (404, Some(false)));
}

#[test]
fn get_updates_holds_an_empty_long_poll_and_confirms_by_offset() {
    let standin = start();
    let started = Instant::now();
    let (_, empty) = call(&standin, "GetUpdates", json!({"timeout": 1}));
    assert_eq!(empty["result"], json!([]));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the poll was held"
    );

    standin.post_message(&IncomingMessage::new(42, "/start"));
    let (_, first) = call(&standin, "GetUpdates", json!({"timeout": 5}));
    let update = &first["result"][0];
    assert_eq!(update["message"]["text"], "/start");
    assert_eq!(update["message"]["entities"][0]["type"], "bot_command");
    assert_eq!(update["message"]["chat"]["id"], 42);
    let next = update["update_id"].as_i64().unwrap() + 1;
    let (_, again) = call(
        &standin,
        "GetUpdates",
        json!({"offset": next, "timeout": 0}),
    );
    assert_eq!(
        again["result"],
        json!([]),
        "the offset confirmed the update"
    );
    assert_eq!(standin.stats().get_updates_at_ms.len(), 3);
}

#[test]
fn sent_messages_are_recorded_and_waited_for() {
    let standin = start();
    let hello = json!({"chat_id": 42, "text": "hello"});
    let (status, sent) = call(&standin, "SendMessage", hello);
    assert_eq!(status, 200);
    assert_eq!(sent["result"]["text"], "hello");
    let seen = standin.wait_for_sent(0, Some(42), Duration::from_secs(1));
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].seq, seen[0].chat_id, seen[0].text.as_str()),
        (1, 42, "hello")
    );
    assert!(
        standin
            .wait_for_sent(1, None, Duration::from_millis(100))
            .is_empty()
    );
    let (status, _) = call(&standin, "sendMessage", json!({"text": "no chat"}));
    assert_eq!(status, 400);
}

#[test]
fn a_429_has_telegrams_shape_and_is_recorded_with_the_call_times() {
    let standin = start();
    standin.inject(Fault::too_many_requests("sendMessage", 2));
    let message = json!({"chat_id": 42, "text": "hello"});
    let (status, body) = call(&standin, "SendMessage", message.clone());
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({
            "ok": false,
            "error_code": 429,
            "description": "Too Many Requests: retry after 2",
            "parameters": {"retry_after": 2},
        })
    );
    assert!(standin.sent().is_empty(), "a refused call sends nothing");
    assert!(standin.faults().is_empty(), "the fault was for one call");

    let (status, _) = call(&standin, "sendMessage", message);
    assert_eq!(status, 200);
    assert_eq!(standin.sent().len(), 1);
    let stats = standin.stats();
    assert_eq!(stats.calls_at_ms["sendmessage"].len(), 2);
    assert_eq!(stats.faults_applied.len(), 1);
    let applied = &stats.faults_applied[0];
    assert_eq!(
        (applied.method.as_str(), &applied.kind, applied.at_ms),
        (
            "sendmessage",
            &FaultKind::TooManyRequests { retry_after: 2 },
            stats.calls_at_ms["sendmessage"][0]
        )
    );
}

#[test]
fn faults_apply_to_their_method_for_their_number_of_calls() {
    let standin = start();
    standin.inject(Fault::server_error("getMe", 502).times(Some(2)));
    for _ in 0..2 {
        let (status, _) = call(&standin, "sendMessage", json!({"chat_id": 1, "text": "x"}));
        assert_eq!(status, 200, "another method is not affected");
    }
    for _ in 0..2 {
        let (status, body) = call(&standin, "getMe", json!({}));
        assert_eq!(
            (status, body["ok"].as_bool(), body["description"].as_str()),
            (502, Some(false), Some("Bad Gateway"))
        );
    }
    let (status, _) = call(&standin, "getMe", json!({}));
    assert_eq!(status, 200, "used up after two calls: 5xx-free again");
    assert_eq!(standin.stats().faults_applied.len(), 2);
}

#[test]
fn a_delay_holds_every_call_until_cleared_and_adds_to_another_fault() {
    let standin = start();
    standin.inject(Fault::delay("*", Duration::from_millis(300)));
    standin.inject(Fault::too_many_requests("getMe", 1));
    let timed = |method: &str| {
        let started = Instant::now();
        let (status, _) = call(&standin, method, json!({}));
        (status, started.elapsed())
    };
    let (status, took) = timed("getMe");
    assert_eq!(status, 429);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let (status, took) = timed("getMe");
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert_eq!(standin.faults().len(), 1, "the delay stays until cleared");
    standin.clear_faults();
    let (status, took) = timed("getMe");
    assert_eq!(status, 200);
    assert!(took < Duration::from_millis(300), "{took:?}");
}

#[test]
fn a_broken_response_is_not_http() {
    let standin = start();
    standin.inject(Fault::broken_response("getMe"));
    let error = client::request(
        &standin.url(),
        "POST",
        &format!("/bot{}/getMe", token()),
        Some("{}"),
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
    let (status, _) = call(&standin, "getMe", json!({}));
    assert_eq!(status, 200);
}

#[test]
fn faults_are_controlled_over_http_too() {
    let standin = start();
    let (status, pending) = post(
        &standin,
        "/control/faults",
        json!({"method": "getUpdates", "kind": "too_many_requests", "retry_after": 3}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        pending,
        json!([{"method": "getUpdates", "kind": "too_many_requests", "retry_after": 3, "times": 1}])
    );
    let (status, _) = post(
        &standin,
        "/control/faults",
        json!({"method": "*", "kind": "delay", "ms": 10, "times": null}),
    );
    assert_eq!(status, 200);
    assert_eq!(standin.faults()[1].times, None);
    for wrong in [
        json!({"method": "getMe", "kind": "server_error", "status": 200}),
        json!({"method": "getMe", "kind": "explode"}),
        json!({"method": "", "kind": "broken_response"}),
    ] {
        let (status, body) = post(&standin, "/control/faults", wrong.clone());
        assert_eq!(status, 400, "{wrong} is refused: {body}");
        assert!(body["error"].is_string());
    }
    let (status, body) = call(&standin, "getUpdates", json!({"timeout": 0}));
    assert_eq!(
        (status, body["parameters"]["retry_after"].as_u64()),
        (429, Some(3))
    );
    let (_, listed) = control(&standin, "GET", "/control/faults", None);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let (status, _) = control(&standin, "DELETE", "/control/faults", None);
    assert_eq!(status, 200);
    assert!(standin.faults().is_empty());
    let (_, stats) = control(&standin, "GET", "/control/stats", None);
    assert_eq!(
        stats["faults_applied"][0]["kind"], "too_many_requests",
        "{stats}"
    );
}

#[test]
fn a_batch_of_messages_arrives_in_one_poll_and_sent_waits_for_a_count() {
    let standin = start();
    let batch: Vec<Value> = (1..=3)
        .map(|id| json!({"user_id": id, "text": "/start", "first_name": format!("U{id}")}))
        .collect();
    let (status, posted) = post(&standin, "/control/messages/batch", json!(batch));
    assert_eq!(status, 200);
    assert_eq!(posted["update_ids"], json!([1, 2, 3]));
    assert_eq!(posted["sent_before"], 0);
    standin.post_messages(&[
        IncomingMessage::new(4, "/help"),
        IncomingMessage::new(5, "/me"),
    ]);
    let (_, polled) = call(&standin, "getUpdates", json!({"timeout": 1}));
    let chats: Vec<i64> = polled["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["message"]["chat"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(chats, [1, 2, 3, 4, 5]);

    let answering = std::thread::scope(|scope| {
        scope.spawn(|| {
            for chat in 1..=3 {
                std::thread::sleep(Duration::from_millis(50));
                call(
                    &standin,
                    "sendMessage",
                    json!({"chat_id": chat, "text": "hi"}),
                );
            }
        });
        control(
            &standin,
            "GET",
            "/control/sent?after=0&min=3&wait_ms=10000",
            None,
        )
        .1
    });
    assert_eq!(answering.as_array().map(Vec::len), Some(3), "{answering}");
    assert_eq!(standin.wait_for_sent_count(0, 3, Duration::ZERO).len(), 3);
    assert_eq!(
        standin
            .wait_for_sent_count(0, 4, Duration::from_millis(50))
            .len(),
        3,
        "on timeout, what was sent so far"
    );
}

#[test]
fn a_held_long_poll_is_counted_in_flight() {
    let standin = start();
    std::thread::scope(|scope| {
        let poll = scope.spawn(|| call(&standin, "getUpdates", json!({"timeout": 2})));
        let deadline = Instant::now() + Duration::from_secs(2);
        while standin.stats().polls_in_flight == 0 {
            assert!(Instant::now() < deadline, "the poll is held");
            std::thread::sleep(Duration::from_millis(10));
        }
        poll.join().unwrap();
    });
    assert_eq!(standin.stats().polls_in_flight, 0);
}

/// Plays the bot: answers every message it polls, until `stop`.
fn echo_bot(standin: &Standin, stop: &std::sync::atomic::AtomicBool) {
    let mut offset = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (_, polled) = call(
            standin,
            "getUpdates",
            json!({"offset": offset, "timeout": 1}),
        );
        for update in polled["result"].as_array().unwrap() {
            offset = update["update_id"].as_i64().unwrap() + 1;
            let chat = update["message"]["chat"]["id"].clone();
            call(
                standin,
                "sendMessage",
                json!({"chat_id": chat, "text": "welcome"}),
            );
        }
    }
}

#[test]
fn load_prints_one_json_line_once_every_user_got_an_answer() {
    let standin = start();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let output = std::thread::scope(|scope| {
        scope.spawn(|| echo_bot(&standin, &stop));
        let output = load(&standin, "150", "60");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        output
    });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("{\"messages\":150,\"seconds\":") && stdout.contains(",\"per_second\":"),
        "the keys in the promised order: {stdout}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report.as_object().unwrap().len(), 3, "{report}");
    assert_eq!(report["messages"], 150);
    let seconds = report["seconds"].as_f64().unwrap();
    let per_second = report["per_second"].as_f64().unwrap();
    assert!(seconds > 0.0 && per_second > 0.0, "{report}");
    assert!((per_second * seconds - 150.0).abs() < 2.0, "{report}");
    let answered: std::collections::HashSet<i64> =
        standin.sent().iter().map(|m| m.chat_id).collect();
    assert_eq!(answered.len(), 150, "150 distinct users, each answered");
}

#[test]
fn load_without_a_bot_gives_up_at_its_timeout_and_says_why() {
    let standin = start();
    let output = load(&standin, "3", "1");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no report on stdout");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("only 0 of 3 users got an answer"),
        "{stderr}"
    );
}
