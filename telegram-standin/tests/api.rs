//! The stand-in over real HTTP, as the bot and the `chat` command see it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use telegram_standin::{Config, IncomingMessage, Standin, client};

fn call(standin: &Standin, token: &str, method: &str, body: Value) -> (u16, Value) {
    let (status, text) = client::request(
        &standin.url(),
        "POST",
        &format!("/bot{token}/{method}"),
        Some(&body.to_string()),
        Duration::from_secs(20),
    )
    .unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

fn start() -> Standin {
    Standin::start("127.0.0.1:0", Config::default()).unwrap()
}

#[test]
fn methods_answer_in_any_case_wrapped_as_telegram_does() {
    let standin = start();
    let token = Config::default().token;
    for method in ["getMe", "GetMe", "getme"] {
        let (status, body) = call(&standin, &token, method, json!({}));
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
    let (status, body) = call(&standin, "1:wrong", "getMe", json!({}));
    assert_eq!(
        (
            status,
            body["error_code"].as_u64(),
            body["description"].as_str()
        ),
        (401, Some(401), Some("Unauthorized"))
    );
    let (status, body) = call(
        &standin,
        &Config::default().token,
        "launchRocket",
        json!({}),
    );
    assert_eq!((status, body["ok"].as_bool()), (404, Some(false)));
}

#[test]
fn get_updates_holds_an_empty_long_poll_and_confirms_by_offset() {
    let standin = start();
    let token = Config::default().token;
    let started = Instant::now();
    let (_, empty) = call(&standin, &token, "GetUpdates", json!({"timeout": 1}));
    assert_eq!(empty["result"], json!([]));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the poll was held"
    );

    standin.post_message(&IncomingMessage::new(42, "/start"));
    let (_, first) = call(&standin, &token, "GetUpdates", json!({"timeout": 5}));
    let update = &first["result"][0];
    assert_eq!(update["message"]["text"], "/start");
    assert_eq!(update["message"]["entities"][0]["type"], "bot_command");
    assert_eq!(update["message"]["chat"]["id"], 42);
    let next = update["update_id"].as_i64().unwrap() + 1;
    let (_, again) = call(
        &standin,
        &token,
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
    let token = Config::default().token;
    let (status, sent) = call(
        &standin,
        &token,
        "SendMessage",
        json!({"chat_id": 42, "text": "hello"}),
    );
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
    let (status, _) = call(&standin, &token, "sendMessage", json!({"text": "no chat"}));
    assert_eq!(status, 400);
}
