//! Adversarial tests of the bot under Telegram's rules: inputs and failures the project's own
//! tests did not try. A test named after what should hold and failing now is a break; its
//! comment says what was observed. Tests marked "held" passed when written.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::sandbox::*;
use telegram_standin::{Chat, Fault, IncomingMessage, Limits, SentMessage};

/// The most messages that arrived at the stand-in within any one second.
fn busiest_second(sent: &[SentMessage]) -> usize {
    let mut at: Vec<u64> = sent.iter().map(|m| m.at_ms).collect();
    at.sort_unstable();
    let mut most = 0;
    let mut first = 0;
    for last in 0..at.len() {
        while at[last] - at[first] >= 1000 {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

// ---------------------------------------------------------------------------------------------
// Promise 1: each update answered once, across SIGTERM, a deploy, a crash and a restart.
// ---------------------------------------------------------------------------------------------

/// Starts a bot, registers user 1, and has their /help's answer told to wait 30 s (a 429);
/// `what` names the moment the answer meets it. Returns the bot and the stand-in's sequence
/// number before the /help.
fn help_stuck_on_a_429(sandbox: &Sandbox, what: &str) -> (Running, u64) {
    let first = sandbox.start_bot();
    sandbox.welcome(1, "Ann");
    sandbox.too_many_requests(30);
    let after = sandbox.standin.post_message(&message(1, "/help"));
    sandbox.until_a_fault_applies(what);
    (first, after)
}

/// Posts user 6's /q1../q8 at once: the texts, and the stand-in's sequence number before them.
fn eight_queued(sandbox: &Sandbox) -> (Vec<String>, u64) {
    let texts: Vec<String> = (1..=8).map(|i| format!("/q{i}")).collect();
    let batch: Vec<IncomingMessage> = texts.iter().map(|t| message(6, t)).collect();
    let after = sandbox.standin.post_messages(&batch);
    (texts, after)
}

/// Asserts that each of `texts` got one answer in chat 6; a failure says "across the `across`"
/// and shows `logs`.
fn each_answered_once(sandbox: &Sandbox, texts: &[String], across: &str, logs: &str) {
    let answers = sandbox.answers_to(6);
    for text in texts {
        assert_eq!(
            times_answered(&answers, text),
            1,
            "{text} answered once across the {across}; answers: {answers:#?}\n{logs}"
        );
    }
}

/// Fixed. A chat waits out a 429 longer than the grace period when SIGTERM comes. The update's
/// effects (command_log, handled_updates) were committed before the send, so when Telegram
/// delivered it again the next start passed it over as "handled before": the user's /help was
/// answered by neither bot, and the log said otherwise. The stopping bot now keeps the answer
/// (`unsent_answers`, revision 6) and the next start sends it.
#[test]
fn an_answer_cut_off_by_the_grace_period_is_sent_by_the_next_start() {
    let sandbox = Sandbox::upgraded("adv-429-past-grace");
    // Telegram asks this chat to wait 30 s: longer than the 8 s grace.
    let (first, after) = help_stuck_on_a_429(&sandbox, "the answer meets the 429");
    let (took, log) = first.terminate_ok();
    assert!(
        took < Duration::from_secs(10),
        "exits within Compose's 10 s: {took:?}"
    );
    // The deploy's bot starts on the same database.
    let second = sandbox.start_bot();
    let sent = sandbox
        .standin
        .wait_for_sent(after, Some(1), Duration::from_secs(15));
    let (_, _, second_log) = second.terminate();
    assert_eq!(
        sent.len(),
        1,
        "the /help cut off by the stop is answered once, by one of the two bots: {sent:?}\n\
         first bot:\n{log}\nsecond bot:\n{second_log}"
    );
}

/// Held (by accident). One chat is stuck (a long 429) when SIGTERM comes, so the stop confirms
/// the offset only up to its update; another chat's later /help (an unknown user's, which
/// writes nothing and so is not in handled_updates) was answered meanwhile. It is not answered
/// again only because the loop's next poll had already confirmed both updates to Telegram (see
/// `an_answer_cut_off_by_the_grace_period_is_sent_by_the_next_start`): the stop's lower offset
/// brings nothing back.
#[test]
fn a_stop_with_one_chat_stuck_answers_no_other_chat_twice_at_the_next_start() {
    let sandbox = Sandbox::upgraded("adv-stuck-chat-double");
    let (first, _) = help_stuck_on_a_429(&sandbox, "user 1's answer meets the 429");
    // User 2 never sent /start: their /help is answered without a write.
    sandbox.help(2);
    let (_, log) = first.terminate_ok();

    let second_log =
        sandbox.next_bot_fetches("the next bot fetched what was left", Duration::from_secs(3));
    let answers = sandbox.answers_to(2);
    assert_eq!(
        answers.len(),
        1,
        "user 2's /help was answered before the stop; the next start must not answer it again: {answers:?}\n\
         first bot:\n{log}\nsecond bot:\n{second_log}"
    );
}

/// BREAK. A user's messages queue in their chat (one answer a second to a private chat) when
/// the bot is killed (kill -9, OOM, power loss). None of the queued ones had any effect
/// committed, yet the restarted bot never gets them: the loop's next getUpdates, sent right
/// after the batch was handed to the chats, confirmed the whole batch to Telegram before it was
/// answered. Observed: 2-3 of 8 answered, the rest lost for good.
#[test]
fn after_a_crash_messages_still_queued_in_a_chat_are_answered_by_the_restart() {
    let sandbox = Sandbox::upgraded("adv-crash-queued");
    let mut first = sandbox.start_bot();
    // Registered: each command writes (the command log, with the update's id), so an answered
    // one is known as handled at the restart.
    sandbox.welcome(6, "Six");
    let (texts, after) = eight_queued(&sandbox);
    let early = sandbox.standin.wait_for_sent_count(after, 2, ANSWER_WITHIN);
    assert_eq!(early.len(), 2);
    first.crash();
    let log = sandbox.next_bot_answers(after, 8, 15, 0);
    each_answered_once(&sandbox, &texts, "crash", &format!("restarted bot:\n{log}"));
}

/// BREAK. The same with SIGTERM (BOT_STOP_GRACE_SECS=2 to keep the test short; with the
/// default 8 s, any chat with more than ~7 queued answers, or a 429, is in the same place):
/// the stop says the unanswered ones "are delivered to the next start", but the loop confirmed
/// them to Telegram when it polled again; the deploy's bot never sees them.
#[test]
fn messages_not_answered_within_the_grace_are_answered_by_the_next_start() {
    let sandbox = Sandbox::upgraded("adv-stop-queued");
    let first = sandbox.start_bot_with(&[("BOT_STOP_GRACE_SECS", "2")]);
    let (texts, after) = eight_queued(&sandbox);
    sandbox.standin.wait_for_sent_count(after, 1, ANSWER_WITHIN);
    let (_, first_log) = first.terminate_ok();
    let log = sandbox.next_bot_answers(after, 8, 15, 0);
    let logs = format!("stopping bot:\n{first_log}\nnext bot:\n{log}");
    each_answered_once(&sandbox, &texts, "stop", &logs);
}

/// Fixed. kill -9 after the answer went out, before a poll confirmed it (here the poll after
/// the batch hangs, as in the project's own crash test; in life: getUpdates failing or slow
/// while sendMessage works). A known user's update is recognised ("handled before"); an
/// unknown user's /help wrote nothing and was recorded only within the next second, so the
/// restarted bot answered it a second time. Its id is now written before the answer goes out
/// (with those of other chats in one write).
#[test]
fn after_a_crash_an_answered_help_of_an_unknown_user_is_not_answered_again() {
    let sandbox = Sandbox::upgraded("adv-crash-unknown");
    let mut first = sandbox.start_bot();
    wait_until(
        ANSWER_WITHIN,
        || sandbox.standin.stats().polls_in_flight > 0,
        "the first bot's long poll is held",
    );
    // The poll after the batch hangs: the batch is never confirmed.
    sandbox
        .standin
        .inject(Fault::delay("getUpdates", Duration::from_secs(60)));
    sandbox.help(5);
    first.crash();
    sandbox.standin.clear_faults();
    let log = sandbox.next_bot_fetches(
        "the restarted bot fetched the unconfirmed update",
        Duration::from_secs(2),
    );
    let answers = sandbox.answers_to(5);
    assert_eq!(
        answers.len(),
        1,
        "answered once across the crash: {answers:?}\n{log}"
    );
}

/// BREAK. SIGTERM while another process holds the database's write lock and a few users'
/// /start wait on it. The grace period ends after 8 s and the chats are aborted, but their
/// database jobs stay queued on the writer thread, each waiting out the 5 s busy timeout;
/// `store.close()` waits for all of them. The bot exits far past Compose's 10 s (and would be
/// SIGKILLed mid-way).
#[test]
fn a_stop_while_the_database_is_locked_exits_within_composes_ten_seconds() {
    let sandbox = Sandbox::upgraded("adv-stop-locked");
    let bot = sandbox.start_bot();
    sandbox.welcome(1, "Ann");
    let blocker = sandbox.write_lock();
    let users = messages(2..=6, "/start");
    sandbox.standin.post_messages(&users);
    // The offset stays below what is being answered, so the stand-in still counts them as
    // pending: give the bot time to fetch them and start on the first.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, took, log) = bot.terminate();
    blocker.execute_batch("ROLLBACK").unwrap();
    assert!(status.success(), "{log}");
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM to exit within Compose's stop_grace_period (10 s): took {took:?}\n{log}"
    );
}

/// BREAK (depends on the id Telegram picks). The bot was down for over a week; its last run
/// left update ids in handled_updates (retention trims them only 60 s after a start, then
/// hourly). Telegram, after a week without updates, may start update ids over; a NEW update
/// whose id matches a week-old row is taken for a redelivery: "update 1 was handled before
/// (its effects are in the database): not answered again". The new user's /start is
/// swallowed: not registered, not answered.
#[test]
fn a_new_update_reusing_an_id_from_over_a_week_ago_is_answered() {
    let sandbox = Sandbox::upgraded("adv-stale-ids");
    sandbox.sql(
        "INSERT INTO handled_updates (update_id, handled_at)
         VALUES (1, datetime('now', '-9 days')), (2, datetime('now', '-9 days')),
                (3, datetime('now', '-9 days'));",
    );
    let bot = sandbox.start_bot();
    let after = sandbox.standin.post_message(&message(42, "/start"));
    let sent = sandbox
        .standin
        .wait_for_sent(after, Some(42), ANSWER_WITHIN);
    let (_, _, log) = bot.terminate();
    assert_eq!(
        sent.len(),
        1,
        "a new user's /start (update 1) is answered: {sent:?}\n{log}"
    );
    assert_eq!(count(&sandbox.database(), "users"), 1, "{log}");
}

/// Fixed (refused). Two bots with their own tokens on one database: each Telegram bot numbers
/// its updates on its own, and handled_updates is keyed by update_id alone, so the second bot's
/// update 1 was taken for the first bot's ("was handled before") and its user got nothing.
/// The database now names the bot it serves (`bot_identity`, revision 6): the second bot
/// refuses to start, naming both bots and the ways out, and the first goes on serving; with
/// BOT_TAKE_OVER_DATABASE=1 the database moves to the second bot, whose update 1 is answered.
#[test]
fn a_bot_with_another_token_refuses_the_database_unless_told_to_take_it_over() {
    let sandbox = Sandbox::upgraded("adv-two-tokens");
    let other_token = OTHER_TOKEN;
    let other = other_bots_standin();
    let first = sandbox.start_bot();
    assert!(sandbox.say(1, "Ann", "/start").starts_with("Welcome, Ann"));
    let other_heartbeat = sandbox.dir.join("other-heartbeat");
    let as_other = |take_over: &str| {
        let mut command = sandbox.command(&[], other_token);
        command
            .env("TELEGRAM_API_URL", other.url())
            .env("HEARTBEAT_PATH", &other_heartbeat)
            .env("BOT_TAKE_OVER_DATABASE", take_over)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    };
    let mut refused = as_other("").spawn().unwrap();
    let deadline = Instant::now() + ANSWER_WITHIN;
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the second bot did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut why = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut why).unwrap();
    assert!(!status.success(), "{why}");
    for said in [
        "this database serves the bot @demo_bot",
        "BOT_TOKEN is the bot @other_demo_bot's",
        "BOT_TAKE_OVER_DATABASE=1",
    ] {
        assert!(why.contains(said), "{said:?} in:\n{why}");
    }
    assert!(!why.contains(other_token), "{why}");
    assert!(
        sandbox.say(1, "Ann", "/help").starts_with("Commands:"),
        "the first bot goes on serving"
    );
    let (_, _, first_log) = first.terminate();

    // Moved on purpose: the other bot's update 1 is its own, not the first bot's update 1.
    let mut second = as_other("1").spawn().unwrap();
    wait_until(
        ANSWER_WITHIN,
        || other_heartbeat.exists(),
        "the second bot polls",
    );
    let after = other.post_message(&message(2, "/start"));
    let sent = other.wait_for_sent(after, Some(2), ANSWER_WITHIN);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let _ = second.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}\n{log}\nfirst bot:\n{first_log}");
    assert!(sent[0].text.starts_with("Welcome"), "{sent:?}");
    assert!(
        log.contains("it now serves @other_demo_bot (BOT_TAKE_OVER_DATABASE=1)"),
        "{log}"
    );
    assert_eq!(count(&sandbox.database(), "users"), 2, "Ann stays: {log}");
}

/// Held: the token appears in no log line, even at RUST_LOG=trace, through faults whose errors
/// carry the request URL.
#[test]
fn the_token_is_in_no_log_line_even_at_trace_level() {
    let sandbox = Sandbox::upgraded("adv-trace-token");
    let bot = sandbox.start_bot_with(&[("RUST_LOG", "trace")]);
    sandbox.welcome(1, "Ann");
    sandbox
        .standin
        .inject(Fault::broken_response("sendMessage"));
    let after = sandbox.standin.post_message(&message(1, "/me"));
    sandbox
        .standin
        .wait_for_sent(after, Some(1), Duration::from_secs(3));
    sandbox.standin.inject(Fault::broken_response("getUpdates"));
    sandbox
        .standin
        .inject(Fault::server_error("getUpdates", 502));
    std::thread::sleep(Duration::from_secs(3));
    let (_, _, log) = bot.terminate();
    let secret = TOKEN.split_once(':').unwrap().1;
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
    assert!(
        !log.contains("Here is what I store"),
        "no raw answer in the log"
    );
}

/// Held: SIGTERM twice in a row changes nothing: the batch is still answered within the grace.
#[test]
fn a_second_sigterm_does_not_cut_the_grace_short_nor_answer_twice() {
    let sandbox = Sandbox::upgraded("adv-sigterm-twice");
    sandbox
        .standin
        .inject(Fault::delay("sendMessage", Duration::from_millis(700)));
    let bot = sandbox.start_bot();
    let starts = messages(1..=6, "/start");
    let after = sandbox.standin.post_messages(&starts);
    wait_until(
        ANSWER_WITHIN,
        || count(&sandbox.database(), "command_log") >= 1,
        "the batch is being answered",
    );
    let pid = bot.child.id().to_string();
    for _ in 0..2 {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut bot = bot;
    let started = Instant::now();
    let status = bot.child.wait().unwrap();
    let text = bot.log();
    assert!(status.success(), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        sandbox
            .standin
            .wait_for_sent_count(after, 6, Duration::from_secs(1))
            .len(),
        6,
        "{text}"
    );
    sandbox.standin.clear_faults();
    let second = sandbox.start_bot();
    std::thread::sleep(Duration::from_secs(2));
    let _ = second.terminate();
    for user in 1..=6 {
        assert_eq!(sandbox.answers_to(user).len(), 1, "user {user}");
    }
}

// ---------------------------------------------------------------------------------------------
// Promise 2: fair to every chat; outgoing within Telegram's limits; a per-user limit.
// ---------------------------------------------------------------------------------------------

/// BREAK. The outbox takes a slot of the overall limit (27/s) first and only then waits for the
/// chat's own limit (3.3 s for a group). Thirty groups' second answers each take an overall
/// slot at once, then wait ~3 s for their group; meanwhile the overall limiter hands slots to
/// private chats again, and when the groups' waits end both go out together: about twice
/// Telegram's 30 messages a second (measured at the stand-in, its limits off).
#[test]
fn answers_to_groups_and_private_chats_together_stay_under_30_a_second() {
    let sandbox = Sandbox::upgraded("adv-overall-bunching");
    let bot = sandbox.start_bot();
    let mut in_groups = Vec::new();
    for g in 0..30 {
        let group = Chat::group(-(2000 + g), "Team");
        for _ in 0..2 {
            in_groups.push(message(100 + g, "/help").in_chat(group.clone()));
        }
    }
    let after = sandbox.standin.post_messages(&in_groups);
    let first_round = sandbox
        .standin
        .wait_for_sent_count(after, 30, Duration::from_secs(20));
    assert_eq!(first_round.len(), 30);
    // The groups' second answers wait for their groups until ~3.3 s after their first ones.
    let first_at = first_round[0].at_ms;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    while now_ms() < first_at + 2900 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let private = messages(1..=60, "/help");
    sandbox.standin.post_messages(&private);
    let sent = sandbox
        .standin
        .wait_for_sent_count(after, 120, Duration::from_secs(60));
    let (_, _, log) = bot.terminate();
    assert_eq!(sent.len(), 120, "{log}");
    let most = busiest_second(&sent);
    assert!(
        most <= 30,
        "at most 30 messages in any second, as Telegram allows: {most} in one second"
    );
}

/// Held: 200 users at once against the stand-in's limits: few 429s, every user answered once.
#[test]
fn two_hundred_users_at_once_stay_within_telegrams_limits() {
    let sandbox = Sandbox::upgraded("adv-200-users");
    sandbox.standin.set_limits(Some(Limits::default()));
    let bot = sandbox.start_bot();
    let starts = messages(1..=200, "/start");
    let sent = sandbox.send_all(&starts, 200);
    let stats = sandbox.standin.stats();
    let (_, _, log) = bot.terminate();
    assert!(
        stats.rate_limited <= 10,
        "at most 5% met a 429: {} {:?}",
        stats.rate_limited,
        stats.rate_limited_by_chat
    );
    let mut by_chat: HashMap<i64, usize> = HashMap::new();
    for m in &sent {
        *by_chat.entry(m.chat_id).or_default() += 1;
    }
    assert_eq!(by_chat.len(), 200, "{log}");
    assert!(by_chat.values().all(|n| *n == 1));
}

/// Fixed. BOT_USER_MESSAGES_PER_MINUTE is "messages a user may send in a minute before the rest
/// are ignored", but it was a governor quota (a burst of N, then one more every 60/N s): with 2
/// a minute, 2 messages at once and a third 31 s later were all answered: 3 within half a
/// minute (up to 2N-1 in a minute in general).
#[test]
fn a_user_gets_no_more_than_the_limit_answered_within_a_minute() {
    let sandbox = Sandbox::upgraded("adv-user-limit-window");
    let bot = sandbox.start_bot_with(&[("BOT_USER_MESSAGES_PER_MINUTE", "2")]);
    let after = sandbox
        .standin
        .post_messages(&[message(7, "/help"), message(7, "/help")]);
    let sent = sandbox.standin.wait_for_sent_count(after, 2, ANSWER_WITHIN);
    assert_eq!(sent.len(), 2);
    std::thread::sleep(Duration::from_secs(31));
    let after = sandbox.standin.post_message(&message(7, "/help"));
    let third = sandbox
        .standin
        .wait_for_sent(after, Some(7), Duration::from_secs(4));
    let (_, _, log) = bot.terminate();
    assert!(
        third.is_empty(),
        "a third message within the same minute is ignored at 2 a minute: {third:?}\n{log}"
    );
}

/// Held: one user writing in two chats within one batch is answered in both, in order.
#[test]
fn the_same_user_in_two_chats_in_one_batch_is_answered_in_both() {
    let sandbox = Sandbox::upgraded("adv-user-two-chats");
    let bot = sandbox.start_bot();
    let group = Chat::supergroup(-1_000_000_000_077, "Both");
    let batch = [
        message(9, "/start"),
        message(9, "/start@demo_bot").in_chat(group.clone()),
        message(9, "/me"),
        message(9, "/me").in_chat(group.clone()),
    ];
    let sent = sandbox.send_all(&batch, 4);
    let (_, _, log) = bot.terminate();
    let private: Vec<&str> = sent
        .iter()
        .filter(|m| m.chat_id == 9)
        .map(|m| m.text.as_str())
        .collect();
    let grouped: Vec<&str> = sent
        .iter()
        .filter(|m| m.chat_id == group.id)
        .map(|m| m.text.as_str())
        .collect();
    assert!(private[0].starts_with("Welcome") && private[1].contains("Telegram id: 9"));
    assert!(grouped[0].starts_with("Welcome") && grouped[1].contains("private chat"));
    assert_eq!(count(&sandbox.database(), "users"), 1, "{log}");
}

// ---------------------------------------------------------------------------------------------
// Promise 3: health.
// ---------------------------------------------------------------------------------------------

/// BREAK. The health module says a bot whose writes have all failed for a minute is unhealthy.
/// But `health.wrote(answered.is_ok())` counts any answered message as a good write: a known
/// user's /help whose last-seen and command-log write failed (database locked) is answered
/// anyway and resets the run of failures. With every write failing for 70 s (one /start
/// apologised for, /help answered every 10 s) the health check still passes.
#[test]
fn a_minute_of_failing_writes_fails_the_health_check_even_while_help_is_answered() {
    let sandbox = Sandbox::upgraded("adv-writes-failing-minute");
    let bot = sandbox.start_bot();
    sandbox.welcome(1, "Ann");
    let blocker = sandbox.write_lock();
    let locked = Instant::now();
    assert!(sandbox.say(2, "Bo", "/start").starts_with("Sorry"));
    let logged_before = count(&sandbox.database(), "command_log");
    while locked.elapsed() < Duration::from_secs(70) {
        // Each /help waits 500 ms for the lock, is not written, and is answered.
        assert!(sandbox.say(1, "Ann", "/help").starts_with("Commands:"));
        std::thread::sleep(Duration::from_secs(10));
    }
    let (healthy, why) = sandbox.healthcheck();
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        count(&sandbox.database(), "command_log"),
        logged_before,
        "no write went through"
    );
    let (_, _, log) = bot.terminate();
    assert!(
        !healthy,
        "every write failed for 70 s: the health check fails ({why})\n{log}"
    );
}

/// Held: a corrupt heartbeat, or the old release's "alive", fails the check with a reason.
#[test]
fn a_corrupt_or_old_heartbeat_fails_the_health_check() {
    let sandbox = Sandbox::upgraded("adv-heartbeat-corrupt");
    for text in ["alive\n", "{\"ready\":tr", "", "{\"ready\":\"yes\"}"] {
        std::fs::write(sandbox.heartbeat(), text).unwrap();
        let (healthy, why) = sandbox.healthcheck();
        assert!(!healthy, "{text:?}");
        assert!(why.contains("heartbeat"), "{text:?}: {why}");
    }
}

// ---------------------------------------------------------------------------------------------
// Promise 4: groups.
// ---------------------------------------------------------------------------------------------

/// Held: command addressing: case, another bot whose name starts with ours, an empty name,
/// unicode.
#[test]
fn commands_are_matched_to_this_bot_exactly() {
    let sandbox = Sandbox::upgraded("adv-addressing");
    let bot = sandbox.start_bot_with(&[("BOT_RATE_LIMITS", "off")]);
    let group = Chat::group(-900, "G");
    let in_group = |text: &str| message(3, text).in_chat(group.clone());
    let after = sandbox.standin.post_messages(&[
        in_group("/START@Demo_Bot"),
        in_group("/start@demo_bot_extra"),
        in_group("/start@"),
        in_group("/help@demo_bo"),
        in_group("/старт@demo_bot"),
        in_group("/помощь"),
        in_group("/me@DEMO_BOT"),
    ]);
    let sent = sandbox
        .standin
        .wait_for_sent_count(after, 4, Duration::from_secs(5));
    let (_, _, log) = bot.terminate();
    let texts: Vec<&str> = sent.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts.len(), 3, "{texts:?}\n{log}");
    assert!(texts[0].starts_with("Welcome, U3"), "{texts:?}");
    assert!(texts[1].starts_with("I don't know /старт"), "{texts:?}");
    assert!(texts[2].contains("private chat"), "{texts:?}");
}

/// Held: a group upgraded to a supergroup while several answers are queued: each goes to the
/// supergroup, once, in order.
#[test]
fn queued_answers_of_a_group_that_moved_all_reach_the_supergroup_in_order() {
    let sandbox = Sandbox::upgraded("adv-migrate-queued");
    let bot = sandbox.start_bot();
    let group = Chat::group(-777, "Team");
    let batch: Vec<IncomingMessage> = (1..=5)
        .map(|i| message(10 + i, &format!("/nope{i}@demo_bot")).in_chat(group.clone()))
        .collect();
    let after = sandbox.standin.post_messages(&batch);
    sandbox
        .standin
        .wait_for_sent(after, Some(-777), Duration::from_secs(5));
    sandbox.standin.migrate_chat(-777, -1_000_000_000_777);
    let moved = sandbox
        .standin
        .wait_for_sent_count(after, 5, Duration::from_secs(40));
    let (_, _, log) = bot.terminate();
    assert_eq!(moved.len(), 5, "{moved:?}\n{log}");
    for (i, m) in moved.iter().enumerate() {
        assert!(m.text.contains(&format!("/nope{}", i + 1)), "{moved:?}");
        if i > 0 {
            assert_eq!(m.chat_id, -1_000_000_000_777, "{moved:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Promise 5: limits and data.
// ---------------------------------------------------------------------------------------------

/// Held: /me for a user whose stored names are huge (written by another process) fits 4096.
#[test]
fn me_with_huge_stored_names_fits_one_message() {
    let sandbox = Sandbox::upgraded("adv-huge-me");
    let bot = sandbox.start_bot();
    sandbox.welcome(4, "Ann");
    sandbox.sql(
        "UPDATE users SET first_name = replace(printf('%.5000c', 'x'), 'x', '😀'),
             last_name = printf('%.3000c', 'y') WHERE telegram_id = 4",
    );
    let me = sandbox.say(4, "Ann", "/me");
    let (_, _, _log) = bot.terminate();
    assert!(me.chars().count() <= 4096, "{}", me.chars().count());
    assert!(me.starts_with("Here is what I store"));
}

/// What /stats should say, counted from the rows: users, new in the last 7 days (from the
/// hour), seen in the last day, and commands in the last day.
fn counted_from_the_rows(db: &Path) -> (i64, i64, i64, i64) {
    (
        count(db, "users"),
        query::<i64>(
            db,
            "SELECT count(*) FROM users WHERE created_at >= strftime('%Y-%m-%d %H:00:00', 'now', '-7 days')",
        ),
        query::<i64>(
            db,
            "SELECT count(*) FROM users WHERE last_seen_at >= strftime('%Y-%m-%d %H:00:00', 'now', '-1 day')",
        ),
        query::<i64>(
            db,
            "SELECT count(*) FROM command_log WHERE used_at >= strftime('%Y-%m-%d %H:00:00', 'now', '-1 day')",
        ),
    )
}

/// /stats as it reads, against a count of the rows.
fn stats_numbers(text: &str) -> (i64, i64, i64, i64) {
    // "New since 2026-11-19 17:00 UTC: 3": the number after the label's last ": ".
    let number = |label: &str| -> i64 {
        let line = text.lines().find(|l| l.starts_with(label)).unwrap();
        line.rsplit(": ")
            .next()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        number("Users"),
        number("New "),
        number("Active "),
        number("Commands "),
    )
}

/// Was a BREAK: /stats said "New in the last 7 days", "Active in the last 24 hours" and
/// "Commands in the last 24 hours", but summed whole hours: rows of the hour 7 days (24 hours)
/// ago were counted, so the numbers disagreed with the rows ((2, 2, 2, 3) against (2, 1, 1, 2)).
/// Fixed: on revision 5 the answer names the whole hour each window starts at ("New since
/// 2026-11-19 17:00 UTC"), and counts exactly from there.
#[test]
fn stats_counts_exactly_from_the_hours_it_names() {
    let sandbox = Sandbox::upgraded("adv-stats-hours");
    // Not in the first seconds of an hour: the hour's start must be minutes in the past.
    let minute_of_hour = || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        now % 3600
    };
    while minute_of_hour() < 30 || minute_of_hour() > 3590 {
        std::thread::sleep(Duration::from_secs(1));
    }
    sandbox.sql(
        "INSERT INTO users (telegram_id, first_name, created_at, last_seen_at) VALUES
            (2, 'old', strftime('%Y-%m-%d %H:00:00', 'now', '-7 days'),
                       strftime('%Y-%m-%d %H:00:00', 'now', '-1 day'));
         INSERT INTO command_log (user_id, command, used_at)
            SELECT id, 'help', strftime('%Y-%m-%d %H:00:00', 'now', '-1 day') FROM users
            WHERE telegram_id = 2;",
    );
    let bot = sandbox.start_bot_with(&[("ADMIN_IDS", "1")]);
    sandbox.welcome(1, "Ann");
    let stats = sandbox.say(1, "Ann", "/stats");
    let (_, _, log) = bot.terminate();
    let counted = counted_from_the_rows(&sandbox.database());
    assert_eq!(
        stats_numbers(&stats),
        counted,
        "/stats against the rows:\n{stats}\n{log}"
    );
}

/// Held: /stats agrees with the rows after another process deleted users (and, with foreign
/// keys on, their commands), retention-like deletes of command_log, changed timestamps, and a
/// downgrade to revision 4 with writes by the old release, then the upgrade back.
#[test]
fn stats_agrees_with_the_rows_after_outside_writes_and_a_downgrade() {
    let sandbox = Sandbox::upgraded("adv-stats-outside");
    let bot = sandbox.start_bot_with(&[("ADMIN_IDS", "1"), ("BOT_RATE_LIMITS", "off")]);
    let starts = messages(1..=30, "/start");
    sandbox.send_all(&starts, 30);
    let helps = messages(1..=30, "/help");
    sandbox.send_all(&helps, 30);
    let _ = bot.terminate();
    sandbox.sql(
        "PRAGMA foreign_keys = ON;
         DELETE FROM users WHERE telegram_id BETWEEN 20 AND 25;
         DELETE FROM command_log WHERE id IN (SELECT id FROM command_log ORDER BY id LIMIT 5);
         UPDATE users SET last_seen_at = datetime('now', '-3 days') WHERE telegram_id < 5;
         UPDATE users SET created_at = datetime('now', '-30 days') WHERE telegram_id BETWEEN 5 AND 8;",
    );
    let down = sandbox.run(&["db", "downgrade", "--to", "4"]);
    if down.status.success() {
        sandbox.sql(
            "INSERT INTO users (telegram_id, first_name, last_seen_at)
                VALUES (500, 'x', CURRENT_TIMESTAMP), (501, 'y', NULL);
             DELETE FROM users WHERE telegram_id = 3;
             INSERT INTO command_log (user_id, command) SELECT id, 'me' FROM users WHERE telegram_id = 500;",
        );
        sandbox.upgrade();
    }
    let bot = sandbox.start_bot_with(&[("ADMIN_IDS", "1")]);
    let stats = sandbox.say(1, "Ann", "/stats");
    let (_, _, log) = bot.terminate();
    let counted = counted_from_the_rows(&sandbox.database());
    assert_eq!(
        stats_numbers(&stats),
        counted,
        "downgrade ran: {}\n{stats}\n{log}",
        down.status.success()
    );
}

// ---------------------------------------------------------------------------------------------
// A scripted Bot API: for answers the stand-in cannot give (a refusal teloxide does not know,
// update ids and update kinds of our choosing).
// ---------------------------------------------------------------------------------------------

mod scripted {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    /// What `sendMessage` answers: HTTP status and body, given the call's parameters.
    pub type SendReply = Box<dyn Fn(&Value) -> (u16, Value) + Send>;

    pub struct State {
        /// Updates not yet confirmed, by id.
        pub updates: Vec<(i64, Value)>,
        /// Every call: method (lower-case) and parameters.
        pub calls: Vec<(String, Value)>,
        pub send_reply: SendReply,
    }

    pub struct Api {
        pub url: String,
        pub state: Arc<Mutex<State>>,
    }

    impl Api {
        pub fn start(send_reply: SendReply) -> Api {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let state = Arc::new(Mutex::new(State {
                updates: Vec::new(),
                calls: Vec::new(),
                send_reply,
            }));
            let shared = Arc::clone(&state);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || serve(stream, &shared));
                }
            });
            Api { url, state }
        }

        pub fn push(&self, update: Value) {
            let id = update["update_id"].as_i64().unwrap();
            self.state.lock().unwrap().updates.push((id, update));
        }

        pub fn calls(&self, method: &str) -> Vec<Value> {
            self.state
                .lock()
                .unwrap()
                .calls
                .iter()
                .filter(|(m, _)| m == method)
                .map(|(_, p)| p.clone())
                .collect()
        }
    }

    fn serve(stream: TcpStream, state: &Mutex<State>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let params: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
            let method = path.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
            let (status, answer) = handle(state, &method, &params);
            let text = answer.to_string();
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                text.len()
            );
            if writer.write_all(head.as_bytes()).is_err()
                || writer.write_all(text.as_bytes()).is_err()
            {
                return;
            }
        }
    }

    fn ok(result: Value) -> (u16, Value) {
        (200, json!({"ok": true, "result": result}))
    }

    fn handle(state: &Mutex<State>, method: &str, params: &Value) -> (u16, Value) {
        state
            .lock()
            .unwrap()
            .calls
            .push((method.to_owned(), params.clone()));
        match method {
            "getme" => ok(
                json!({"id": 123456, "is_bot": true, "first_name": "Demo Bot",
                "username": "demo_bot", "can_join_groups": true,
                "can_read_all_group_messages": false, "supports_inline_queries": false,
                "can_connect_to_business": false, "has_main_web_app": false}),
            ),
            "deletewebhook" | "setmycommands" => ok(json!(true)),
            "getupdates" => {
                let offset = params["offset"].as_i64().unwrap_or(0);
                let timeout = params["timeout"].as_u64().unwrap_or(0).min(2);
                let deadline = Instant::now() + Duration::from_secs(timeout);
                loop {
                    {
                        let mut state = state.lock().unwrap();
                        if offset > 0 {
                            state.updates.retain(|(id, _)| *id >= offset);
                        }
                        if !state.updates.is_empty() || Instant::now() >= deadline {
                            let ready: Vec<Value> =
                                state.updates.iter().map(|(_, u)| u.clone()).collect();
                            return ok(Value::Array(ready));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            "sendmessage" => {
                let state = state.lock().unwrap();
                (state.send_reply)(params)
            }
            _ => (
                404,
                json!({"ok": false, "error_code": 404, "description": "Not Found"}),
            ),
        }
    }

    /// A sent message as Telegram answers it.
    pub fn sent(params: &Value) -> (u16, Value) {
        let chat_id = params["chat_id"].as_i64().unwrap_or(0);
        let chat = if chat_id < 0 {
            json!({"id": chat_id, "type": "group", "title": "G"})
        } else {
            json!({"id": chat_id, "type": "private", "first_name": "U"})
        };
        ok(
            json!({"message_id": 1, "from": {"id": 123456, "is_bot": true,
            "first_name": "Demo Bot", "username": "demo_bot"},
            "chat": chat, "date": 1_700_000_000, "text": params["text"]}),
        )
    }

    /// A text message update from `user` in `chat`.
    pub fn text_update(update_id: i64, user: i64, chat: i64, text: &str) -> Value {
        let chat_json = if chat < 0 {
            json!({"id": chat, "type": "group", "title": "G"})
        } else {
            json!({"id": chat, "type": "private", "first_name": format!("U{user}")})
        };
        let mut message = json!({"message_id": update_id, "date": 1_700_000_000,
            "from": {"id": user, "is_bot": false, "first_name": format!("U{user}")},
            "chat": chat_json, "text": text});
        if text.starts_with('/') {
            let length = text
                .split_whitespace()
                .next()
                .unwrap()
                .encode_utf16()
                .count();
            message["entities"] = json!([{"type": "bot_command", "offset": 0, "length": length}]);
        }
        json!({"update_id": update_id, "message": message})
    }
}

/// BREAK. sendMessage is to be retried only when surely not delivered (connect errors, 5xx,
/// 429). teloxide reads only the description, not the HTTP status: a 400 whose description it
/// does not know ("Bad Request: not enough rights to send text messages to the chat", as
/// Telegram answers in a group that restricts members) is `ApiError::Unknown`, which
/// failures.rs files as NotDone ("5xx answers arrive this way"), and the refusal is sent again
/// and again: 5 calls, "sendMessage to chat -42 failed (attempt 1 of 5), retrying in 1.0s".
#[test]
fn a_refusal_with_a_description_teloxide_does_not_know_is_not_retried() {
    let sandbox = Sandbox::upgraded("adv-unknown-refusal");
    let api = scripted::Api::start(Box::new(|_| {
        (
            400,
            serde_json::json!({"ok": false, "error_code": 400,
                "description": "Bad Request: not enough rights to send text messages to the chat"}),
        )
    }));
    let bot = sandbox.start_bot_with(&[("TELEGRAM_API_URL", &api.url), ("BOT_RATE_LIMITS", "off")]);
    api.push(scripted::text_update(10, 5, -42, "/help@demo_bot"));
    wait_until(
        ANSWER_WITHIN,
        || !api.calls("sendmessage").is_empty(),
        "the answer is tried",
    );
    std::thread::sleep(Duration::from_secs(18));
    let (_, _, log) = bot.terminate();
    let calls = api.calls("sendmessage").len();
    assert_eq!(
        calls, 1,
        "a 400 refusal is not sent again: {calls} calls\n{log}"
    );
}

/// BREAK (minor). An update id of 2147483647 (Telegram's ids are 32-bit signed integers) makes
/// `update.id.0 as i32 + 1` in the poll loop overflow: in this (debug) build the bot panics and
/// exits; a release build wraps the offset to i32::MIN, keeps its old offset, and is given the
/// same update again on every poll.
#[test]
fn the_largest_update_id_is_answered_once_and_the_bot_keeps_running() {
    let sandbox = Sandbox::upgraded("adv-max-update-id");
    let api = scripted::Api::start(Box::new(scripted::sent));
    let mut bot = sandbox.start_bot_with(&[("TELEGRAM_API_URL", &api.url)]);
    api.push(scripted::text_update(2_147_483_647, 5, 5, "/help"));
    std::thread::sleep(Duration::from_secs(5));
    let alive = bot.child.try_wait().unwrap().is_none();
    let log = bot.log();
    assert!(alive, "the bot is still running:\n{log}");
    let (_, _, log) = bot.terminate();
    assert_eq!(api.calls("sendmessage").len(), 1, "{log}");
}

/// Held: a batch mixing what is not a text message (an edited message, a channel post, a
/// photo, a message with no `from`, a callback, an update of a kind nobody knows) with text:
/// the text is answered once, the offset passes them all, nothing is written for them.
#[test]
fn updates_that_are_not_text_messages_are_passed_over_and_confirmed() {
    use serde_json::json;
    let sandbox = Sandbox::upgraded("adv-update-kinds");
    let api = scripted::Api::start(Box::new(scripted::sent));
    let bot = sandbox.start_bot_with(&[("TELEGRAM_API_URL", &api.url)]);
    let photo = json!({"update_id": 101, "message": {"message_id": 1, "date": 1_700_000_000,
        "from": {"id": 7, "is_bot": false, "first_name": "P"},
        "chat": {"id": 7, "type": "private", "first_name": "P"},
        "photo": [{"file_id": "x", "file_unique_id": "y", "width": 1, "height": 1}],
        "caption": "/start"}});
    let no_from = json!({"update_id": 102, "message": {"message_id": 2, "date": 1_700_000_000,
        "sender_chat": {"id": -1_000_000_000_001_i64, "type": "channel", "title": "C"},
        "chat": {"id": -1_000_000_000_002_i64, "type": "supergroup", "title": "S"},
        "text": "/start"}});
    let edited = json!({"update_id": 103, "edited_message": {"message_id": 3,
        "date": 1_700_000_000, "edit_date": 1_700_000_001,
        "from": {"id": 8, "is_bot": false, "first_name": "E"},
        "chat": {"id": 8, "type": "private", "first_name": "E"}, "text": "/start"}});
    let channel = json!({"update_id": 104, "channel_post": {"message_id": 4,
        "date": 1_700_000_000, "chat": {"id": -1_000_000_000_003_i64, "type": "channel",
        "title": "C"}, "text": "/start"}});
    let unknown = json!({"update_id": 105, "brand_new_kind": {"x": 1}});
    let garbage = json!({"update_id": 106, "message": {"message_id": "not a number"}});
    for update in [photo, no_from, edited, channel, unknown, garbage] {
        api.push(update);
    }
    api.push(scripted::text_update(107, 9, 9, "/start"));
    wait_until(
        ANSWER_WITHIN,
        || !api.calls("sendmessage").is_empty(),
        "the text is answered",
    );
    std::thread::sleep(Duration::from_secs(3));
    let (_, _, log) = bot.terminate();
    let sends = api.calls("sendmessage");
    assert_eq!(sends.len(), 1, "{sends:?}\n{log}");
    assert_eq!(sends[0]["chat_id"], 9);
    let offsets: Vec<i64> = api
        .calls("getupdates")
        .iter()
        .filter_map(|p| p["offset"].as_i64())
        .collect();
    assert!(offsets.contains(&108), "{offsets:?}\n{log}");
    assert_eq!(count(&sandbox.database(), "users"), 1, "{log}");
}

/// Fixed. Fair to every chat: chats are answered independently. But every message first goes
/// through the one writer thread (last-seen, command log), and while another process holds the
/// write lock each /start there waits out the 5 s busy timeout in turn: a known user's /help in
/// another chat, whose own write gives up after 0.5 s, queued behind all of them (~25 s behind
/// five new users' /start). Its best-effort write now waits at most 2 s for its turn.
#[test]
fn while_the_database_is_locked_new_users_start_holds_up_no_other_chats_help() {
    let sandbox = Sandbox::upgraded("adv-locked-fairness");
    let bot = sandbox.start_bot();
    sandbox.welcome(1, "Ann");
    let blocker = sandbox.write_lock();
    let starts = messages(2..=6, "/start");
    sandbox.standin.post_messages(&starts);
    std::thread::sleep(Duration::from_millis(500));
    let posted = Instant::now();
    let after = sandbox.standin.post_message(&message(1, "/help"));
    let help = sandbox
        .standin
        .wait_for_sent(after, Some(1), Duration::from_secs(40));
    let took = posted.elapsed();
    blocker.execute_batch("ROLLBACK").unwrap();
    let (_, _, log) = bot.terminate();
    assert_eq!(help.len(), 1, "{log}");
    assert!(
        took < Duration::from_secs(5),
        "user 1's /help waits for nobody else's chat: answered after {took:?}\n{log}"
    );
}

/// Fixed: two instances with one token started together on one database: the 409s sort
/// themselves out and every message is answered exactly once (an unknown user's /help was
/// answered by both when both fetched it: its id was written only after the answer).
#[test]
fn two_instances_with_one_token_on_one_database_answer_each_message_once() {
    let sandbox = Sandbox::upgraded("adv-two-instances");
    let other_heartbeat = sandbox.dir.join("other-heartbeat");
    let first = sandbox.start_bot();
    let second = sandbox.start_bot_with(&[("HEARTBEAT_PATH", other_heartbeat.to_str().unwrap())]);
    let mut batch = messages(1..=20, "/start");
    batch.extend(messages(21..=40, "/help"));
    let after = sandbox.standin.post_messages(&batch);
    sandbox
        .standin
        .wait_for_sent_count(after, 40, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let (_, _, log1) = first.terminate();
    let (_, _, log2) = second.terminate();
    for user in 1..=40 {
        let answers = sandbox.answers_to(user);
        assert_eq!(answers.len(), 1, "user {user}: {answers:?}\n{log1}\n{log2}");
    }
    assert_eq!(count(&sandbox.database(), "users"), 20);
}

/// A minute of real 409s: another instance (its own database, the same token) polls beside
/// the bot for 75 s; both health checks should fail ("after a minute of 409s in a row").
#[test]
fn a_real_minute_of_409s_from_another_instance_fails_both_health_checks() {
    let sandbox = Sandbox::upgraded("adv-real-409-minute");
    let first = sandbox.start_bot();
    sandbox.welcome(42, "Ann");
    let other_database = sandbox.dir.join("other.db");
    std::fs::copy(sandbox.database(), &other_database).unwrap();
    let other_heartbeat = sandbox.dir.join("other-heartbeat");
    let second = sandbox.start_bot_with(&[
        ("DATABASE_PATH", other_database.to_str().unwrap()),
        ("HEARTBEAT_PATH", other_heartbeat.to_str().unwrap()),
    ]);
    std::thread::sleep(Duration::from_secs(75));
    let (first_ok, first_why) = sandbox.healthcheck();
    let other = sandbox
        .command(&["healthcheck"], TOKEN)
        .env("DATABASE_PATH", &other_database)
        .env("HEARTBEAT_PATH", &other_heartbeat)
        .output()
        .unwrap();
    let (_, _, log1) = first.terminate();
    let (_, _, log2) = second.terminate();
    let conflicts = sandbox.standin.stats().conflicts;
    assert!(
        !first_ok && !other.status.success(),
        "after 75 s of two instances ({conflicts} 409s) both fail: first {first_ok} ({first_why}), other {} ({})\n{}\n{}",
        other.status.success(),
        String::from_utf8_lossy(&other.stderr),
        log1.lines()
            .filter(|l| !l.contains("409"))
            .collect::<Vec<_>>()
            .join("\n"),
        log2.lines()
            .filter(|l| !l.contains("409"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

/// Makes a file immutable (even for root) until dropped.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        let done = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .ok()?
            .success();
        done.then(|| Immutable(path.to_owned()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// Held: a database file that cannot be written (as on a disk remounted read-only; here
/// `chattr +i`, which binds root too) never makes the bot ready, and the check says why.
#[test]
fn a_bot_on_a_database_it_cannot_write_is_never_ready() {
    let sandbox = Sandbox::upgraded("adv-readonly-ready");
    let Some(_frozen) = Immutable::set(&sandbox.database()) else {
        eprintln!("chattr +i is not available here: skipped");
        return;
    };
    let log_path = sandbox.dir.join("readonly.log");
    let mut child = sandbox
        .command(&[], TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let (healthy, why) = sandbox.healthcheck();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!("healthcheck: {why}\n{log}");
    assert!(
        !healthy,
        "not ready on a database that takes no writes\n{log}"
    );
    assert!(
        why.contains("not ready") || why.contains("heartbeat"),
        "{why}\n{log}"
    );
}
