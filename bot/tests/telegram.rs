//! The bot under Telegram's rules, against the stand-in playing them: each update answered once
//! across a stop, a crash and a restart; retries only of what surely was not delivered; 409 from
//! another instance; one chat's wait holding up no other; groups; limits; readiness.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::sandbox::*;
use telegram_standin::{Chat, Fault, IncomingMessage, Limits};

/// `count` users' /start, each with a first name the answers can be told apart by.
fn starts(first: i64, count: i64) -> Vec<IncomingMessage> {
    (first..first + count)
        .map(|id| {
            let mut message = IncomingMessage::new(id, "/start");
            message.first_name = Some(format!("U{id}"));
            message
        })
        .collect()
}

/// The answers each chat got, over the whole test.
fn answers_by_chat(sandbox: &Sandbox) -> HashMap<i64, Vec<String>> {
    let mut by_chat: HashMap<i64, Vec<String>> = HashMap::new();
    for sent in sandbox.standin.sent() {
        by_chat.entry(sent.chat_id).or_default().push(sent.text);
    }
    by_chat
}

/// The vitals the bot wrote into its heartbeat.
fn vitals(sandbox: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(sandbox.heartbeat()).unwrap()).unwrap()
}

#[test]
fn a_stop_in_the_middle_of_a_batch_answers_every_message_once_across_the_restart() {
    let sandbox = Sandbox::upgraded("stop-mid-batch");
    // Every answer takes 1.5 s to go out: the stop comes while the batch is being answered.
    sandbox
        .standin
        .inject(Fault::delay("sendMessage", Duration::from_millis(1500)));
    let first = sandbox.start_bot();
    let after = sandbox.standin.post_messages(&starts(1, 20));
    wait_until(
        ANSWER_WITHIN,
        || count(&sandbox.database(), "command_log") >= 1,
        "the batch is being answered",
    );
    let (took, log) = first.terminate_ok();
    assert!(
        took < Duration::from_secs(4),
        "the batch finished within the grace period: {took:?}\n{log}"
    );
    assert!(
        log.contains("get up to 4s") && log.contains("confirmed"),
        "the stop waits for the batch, then confirms the offset:\n{log}"
    );
    assert_eq!(
        sandbox
            .standin
            .wait_for_sent_count(after, 20, ANSWER_WITHIN)
            .len(),
        20,
        "the stopping bot answered the whole batch"
    );

    // The next bot (a deploy's) starts where the first one stopped.
    sandbox.standin.clear_faults();
    let second = sandbox.start_bot();
    assert!(
        sandbox
            .say(99, "Zed", "/start")
            .starts_with("Welcome, Zed!")
    );
    second.terminate_ok();
    let answers = answers_by_chat(&sandbox);
    for user in 1..=20 {
        assert_eq!(
            answers[&user],
            [format!(
                "Welcome, U{user}! You are registered. Send /help to see what I can do."
            )],
            "user {user} got exactly one answer"
        );
    }
    assert_eq!(count(&sandbox.database(), "command_log"), 21);
}

#[test]
fn after_a_crash_an_update_whose_effects_were_committed_is_not_handled_again() {
    let sandbox = Sandbox::upgraded("crash");
    // The answers hang, and the poll that would confirm the batch hangs before it does: a
    // crash now leaves the batch committed in the database but unconfirmed at Telegram.
    sandbox
        .standin
        .inject(Fault::delay("sendMessage", Duration::from_secs(60)));
    let mut first = sandbox.start_bot();
    wait_until(
        ANSWER_WITHIN,
        || sandbox.standin.stats().polls_in_flight > 0,
        "the first bot's long poll is held",
    );
    sandbox
        .standin
        .inject(Fault::delay("getUpdates", Duration::from_secs(60)));
    sandbox.standin.post_messages(&starts(1, 10));
    wait_until(
        ANSWER_WITHIN,
        || count(&sandbox.database(), "command_log") == 10,
        "every /start of the batch is committed",
    );
    first.crash();
    assert_eq!(
        sandbox.standin.stats().pending_updates,
        10,
        "nothing confirmed"
    );

    sandbox.standin.clear_faults();
    let second = sandbox.start_bot();
    wait_until(
        ANSWER_WITHIN,
        || sandbox.standin.stats().pending_updates == 0,
        "the second bot fetched the batch again",
    );
    assert!(
        sandbox
            .say(99, "Zed", "/start")
            .starts_with("Welcome, Zed!")
    );
    let (_, log) = second.terminate_ok();
    assert_eq!(
        log.matches("was handled before").count(),
        10,
        "each update of the batch is known as handled:\n{log}"
    );
    let answers = answers_by_chat(&sandbox);
    for user in 1..=10 {
        assert!(
            !answers.contains_key(&user),
            "user {user} is not answered twice (the crashed bot's answer hung): {answers:?}"
        );
    }
    assert_eq!(count(&sandbox.database(), "users"), 11);
    assert_eq!(count(&sandbox.database(), "command_log"), 11);
}

#[test]
fn an_answer_that_may_have_been_delivered_is_not_sent_again_nor_logged() {
    let sandbox = Sandbox::upgraded("garbled");
    let bot = sandbox.start_bot();
    sandbox.welcome(42, "Ann");
    // Telegram does the sendMessage, and its answer breaks off: the user has the reply.
    sandbox.standin.inject(Fault::garbled_answer("sendMessage"));
    let calls_before = sandbox.standin.stats().calls["sendmessage"];
    assert!(sandbox.say(42, "Ann", "/me").contains("Telegram id: 42"));
    // A 502 means Telegram did not do it: retried.
    sandbox
        .standin
        .inject(Fault::server_error("sendMessage", 502));
    let after = sandbox
        .standin
        .post_message(&IncomingMessage::new(42, "/help"));
    let help = sandbox
        .standin
        .wait_for_sent(after, Some(42), Duration::from_secs(30));
    assert_eq!(help.len(), 1, "{help:?}");
    let (_, log) = bot.terminate_ok();
    assert_eq!(
        sandbox.standin.stats().calls["sendmessage"] - calls_before,
        3,
        "one call for /me (not retried), two for /help (the 502, then the retry)"
    );
    let me_answers = answers_by_chat(&sandbox)[&42]
        .iter()
        .filter(|a| a.contains("Telegram id"))
        .count();
    assert_eq!(me_answers, 1, "the reply to /me went out once");
    assert!(
        log.contains("may have been delivered, so it is not sent again"),
        "{log}"
    );
    assert!(
        !log.contains("Here is what I store") && !log.contains("Telegram id: 42"),
        "Telegram's raw answer (the user's data) is in no log line:\n{log}"
    );
}

#[test]
fn a_second_instance_polling_with_the_token_is_named_and_the_bot_stays_ready_for_a_minute() {
    let sandbox = Sandbox::upgraded("conflict");
    let first = sandbox.start_bot();
    sandbox.welcome(42, "Ann");
    let (healthy, why) = sandbox.healthcheck();
    assert!(
        healthy,
        "ready after a getUpdates and the write probe: {why}"
    );

    // Another instance on another server: its own database, the same token.
    let other_database = sandbox.dir.join("other.db");
    std::fs::copy(sandbox.database(), &other_database).unwrap();
    let other_heartbeat = sandbox.dir.join("other-heartbeat");
    let other = sandbox.start_bot_with(&[
        ("DATABASE_PATH", other_database.to_str().unwrap()),
        ("HEARTBEAT_PATH", other_heartbeat.to_str().unwrap()),
    ]);
    wait_until(
        Duration::from_secs(20),
        || first.log().contains("409 Conflict") && other.log().contains("409 Conflict"),
        "both instances meet 409s",
    );
    assert!(
        first
            .log()
            .contains("another instance is polling with this BOT_TOKEN"),
        "{}",
        first.log()
    );
    wait_until(
        Duration::from_secs(20),
        || vitals(&sandbox)["conflict_since_ms"].is_u64(),
        "the run of 409s is in the heartbeat",
    );
    let (healthy, why) = sandbox.healthcheck();
    assert!(
        healthy,
        "under a minute of 409s the bot stays healthy: {why}"
    );
    drop(other);
    // The other instance is gone: the first one polls alone again.
    wait_until(
        Duration::from_secs(30),
        || vitals(&sandbox).get("conflict_since_ms").is_none(),
        "the conflict ends once the other instance stops",
    );
    first.terminate_ok();
    assert!(sandbox.standin.stats().conflicts >= 2);
}

#[test]
fn a_minute_of_409s_fails_the_health_check_and_says_why() {
    let sandbox = Sandbox::upgraded("conflict-minute");
    let bot = sandbox.start_bot();
    sandbox.welcome(42, "Ann");
    let (healthy, why) = sandbox.healthcheck();
    assert!(healthy, "{why}");
    // The heartbeat as the loop writes it after 61 s of 409s in a row.
    bot.terminate_ok();
    let mut vitals = vitals(&sandbox);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    vitals["conflict_since_ms"] = serde_json::json!(now_ms - 61_000);
    std::fs::write(sandbox.heartbeat(), vitals.to_string()).unwrap();
    let (healthy, why) = sandbox.healthcheck();
    assert!(!healthy);
    assert!(
        why.contains("another instance has been polling with this BOT_TOKEN for 61s"),
        "{why}"
    );
}

#[test]
fn a_chat_that_waits_out_a_429_holds_up_no_other_chat() {
    let sandbox = Sandbox::upgraded("fair");
    let bot = sandbox.start_bot();
    // The next sendMessage (user A's) is told to wait 6 s.
    sandbox.too_many_requests(6);
    let after = sandbox
        .standin
        .post_message(&IncomingMessage::new(1, "/help"));
    sandbox.until_a_fault_applies("user A's answer meets the 429");
    let b_answer = sandbox
        .standin
        .post_message(&IncomingMessage::new(2, "/help"));
    let b = sandbox
        .standin
        .wait_for_sent(b_answer, Some(2), Duration::from_secs(3));
    assert_eq!(b.len(), 1, "user B is answered while A waits: {b:?}");
    let a = sandbox
        .standin
        .wait_for_sent(after, Some(1), Duration::from_secs(15));
    assert_eq!(a.len(), 1, "A is answered after the wait");
    assert!(a[0].seq > b[0].seq, "B was answered before A: {a:?} {b:?}");
    bot.terminate_ok();
}

#[test]
fn answers_stay_within_telegrams_limits_and_each_chat_gets_its_answers_in_order() {
    let sandbox = Sandbox::upgraded("limits");
    sandbox.standin.set_limits(Some(Limits::default()));
    let bot = sandbox.start_bot();
    let mut messages = Vec::new();
    for user in 1..=40 {
        messages.push(IncomingMessage::new(user, "/start"));
        messages.push(IncomingMessage::new(user, "/help"));
        messages.push(IncomingMessage::new(user, "/nope"));
    }
    let sent = sandbox.send_all(&messages, 120);
    // The bot spaces its messages 10% under Telegram's numbers; the stand-in measures them when
    // it handles them, after a trip through a busy machine, so an odd 429 may still come (the
    // bot waits it out for that chat alone). A bot without limits gets dozens here.
    let stats = sandbox.standin.stats();
    assert!(
        stats.rate_limited <= 6,
        "at most 5% of the messages met a 429: {} ({:?})",
        stats.rate_limited,
        stats.rate_limited_by_chat
    );
    for user in 1..=40 {
        let texts: Vec<&str> = sent
            .iter()
            .filter(|m| m.chat_id == user)
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(texts.len(), 3, "{user}: {texts:?}");
        assert!(texts[0].starts_with("Welcome"), "{user}: {texts:?}");
        assert!(texts[1].starts_with("Commands:"), "{user}: {texts:?}");
        assert!(
            texts[2].starts_with("I don't know /nope"),
            "{user}: {texts:?}"
        );
    }
    bot.terminate_ok();
}

#[test]
fn a_user_writing_faster_than_the_limit_is_not_answered_nor_written_for() {
    let sandbox = Sandbox::upgraded("flood");
    let bot = sandbox.start_bot_with(&[("BOT_USER_MESSAGES_PER_MINUTE", "3")]);
    let flood: Vec<IncomingMessage> = (0..8).map(|_| IncomingMessage::new(7, "/start")).collect();
    let after = sandbox.standin.post_messages(&flood);
    let sent = sandbox
        .standin
        .wait_for_sent_count(after, 4, Duration::from_secs(6));
    assert_eq!(sent.len(), 3, "three answers, the rest ignored: {sent:?}");
    assert_eq!(count(&sandbox.database(), "command_log"), 3);
    // Another user is not limited by it.
    assert!(sandbox.say(8, "Bo", "/start").starts_with("Welcome, Bo"));
    let (_, log) = bot.terminate_ok();
    assert!(
        log.contains("user 7 writes faster than 3 messages a minute"),
        "{log}"
    );
}

#[test]
fn in_groups_commands_for_other_bots_are_ignored_and_private_data_stays_private() {
    let sandbox = Sandbox::upgraded("groups");
    let bot = sandbox.start_bot();
    let group = Chat::group(-500, "Friends");
    let say_in_group = |user: i64, text: &str| {
        let mut message = IncomingMessage::new(user, text).in_chat(group.clone());
        message.first_name = Some(format!("U{user}"));
        message
    };
    // A command for another bot, then one for this bot: the first answer is the second's.
    let after = sandbox.standin.post_messages(&[
        say_in_group(1, "/start@other_bot"),
        say_in_group(1, "/ban@modbot"),
        say_in_group(1, "hello everyone"),
        say_in_group(1, "/start@demo_bot"),
    ]);
    let sent = sandbox
        .standin
        .wait_for_sent_count(after, 2, Duration::from_secs(3));
    assert_eq!(sent.len(), 1, "one answer in the group: {sent:?}");
    assert_eq!(sent[0].chat_id, -500);
    assert!(sent[0].text.starts_with("Welcome, U1!"), "{sent:?}");
    assert_eq!(count(&sandbox.database(), "users"), 1);
    assert_eq!(
        command_log(&sandbox.database()),
        [(1, "start".to_owned())],
        "nothing written for the other bots' commands"
    );

    let after = sandbox.standin.post_message(&say_in_group(1, "/me"));
    let me = sandbox
        .standin
        .wait_for_sent(after, Some(-500), ANSWER_WITHIN);
    assert!(
        me[0].text.contains("private chat") && !me[0].text.contains("Telegram id"),
        "/me in a group gives a hint, not the data: {me:?}"
    );
    let after = sandbox.standin.post_message(&say_in_group(1, "/stats"));
    let stats = sandbox
        .standin
        .wait_for_sent(after, Some(-500), ANSWER_WITHIN);
    assert!(!stats[0].text.contains("Users:"), "{stats:?}");
    bot.terminate_ok();
}

#[test]
fn an_answer_to_a_group_that_became_a_supergroup_goes_to_the_supergroup() {
    let sandbox = Sandbox::upgraded("supergroup");
    let bot = sandbox.start_bot();
    // The answer is held 1 s on its way; the group is upgraded meanwhile.
    sandbox
        .standin
        .inject(Fault::delay("sendMessage", Duration::from_secs(1)).times(Some(1)));
    let mut help = IncomingMessage::new(1, "/help").in_chat(Chat::group(-600, "Team"));
    help.first_name = Some("Ann".into());
    let after = sandbox.standin.post_message(&help);
    wait_until(
        ANSWER_WITHIN,
        || sandbox.standin.stats().calls.contains_key("sendmessage"),
        "the answer is on its way",
    );
    sandbox.standin.migrate_chat(-600, -1_000_000_000_600);
    let sent = sandbox
        .standin
        .wait_for_sent(after, Some(-1_000_000_000_600), ANSWER_WITHIN);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].text.starts_with("Commands:"));
    let (_, log) = bot.terminate_ok();
    assert!(log.contains("became supergroup"), "{log}");
}

#[test]
fn stats_fits_in_one_telegram_message_however_many_commands_were_tried() {
    let sandbox = Sandbox::upgraded("stats-long");
    let bot = sandbox.start_bot_with(&[
        ("ADMIN_IDS", "1"),
        ("BOT_USER_MESSAGES_PER_MINUTE", "0"),
        ("BOT_RATE_LIMITS", "off"),
    ]);
    let mut messages = starts(1, 10);
    for n in 0..150 {
        let junk = format!(
            "/{}",
            format!("junk{n:03}_")
                .repeat(4)
                .chars()
                .take(32)
                .collect::<String>()
        );
        messages.push(IncomingMessage::new(1 + n % 10, &junk));
    }
    sandbox.send_all(&messages, messages.len());
    let after = sandbox
        .standin
        .post_message(&IncomingMessage::new(1, "/stats"));
    let stats = sandbox.standin.wait_for_sent(after, Some(1), ANSWER_WITHIN);
    assert_eq!(stats.len(), 1, "Telegram took the answer: {stats:?}");
    assert!(
        stats[0].text.starts_with("Users: 10") && stats[0].text.chars().count() <= 4096,
        "{}",
        stats[0].text
    );
    bot.terminate_ok();
}

#[test]
fn the_bot_is_ready_only_after_a_successful_get_updates() {
    let sandbox = Sandbox::upgraded("ready");
    sandbox
        .standin
        .inject(Fault::broken_response("getUpdates").times(None));
    let bot = sandbox.start_bot();
    wait_until(
        ANSWER_WITHIN,
        || sandbox.standin.stats().faults_applied.len() >= 2,
        "the polls fail",
    );
    let (healthy, why) = sandbox.healthcheck();
    assert!(!healthy, "not ready while no getUpdates worked");
    assert!(why.contains("not ready yet"), "{why}");
    sandbox.standin.clear_faults();
    wait_until(
        Duration::from_secs(20),
        || sandbox.healthcheck().0,
        "ready once a getUpdates works",
    );
    bot.terminate_ok();
}

#[test]
fn failing_writes_show_in_the_health_check_and_help_is_still_answered() {
    let sandbox = Sandbox::upgraded("writes-fail");
    let bot = sandbox.start_bot();
    sandbox.welcome(42, "Ann");
    // Another process holds the write lock longer than the bot's busy timeout.
    let blocker = sandbox.write_lock();
    let help = sandbox.say(42, "Ann", "/help");
    assert!(
        help.starts_with("Commands:"),
        "/help does not need a write: {help}"
    );
    let sorry = sandbox.say(43, "Bo", "/start");
    assert!(sorry.starts_with("Sorry"), "{sorry}");
    assert!(
        vitals(&sandbox)["writes_failing_since_ms"].is_u64(),
        "{}",
        vitals(&sandbox)
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    assert!(sandbox.say(43, "Bo", "/start").starts_with("Welcome, Bo"));
    assert!(vitals(&sandbox).get("writes_failing_since_ms").is_none());
    bot.terminate_ok();
}
