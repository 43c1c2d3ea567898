//! Adversarial tests of the stand-in's HTTP server (hyper), client and command line: each test
//! states the promise it probes; a failing one names the promise that broke. Raw sockets, so
//! that the requests are exactly those written here.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{start, token};
use serde_json::{Value, json};
use telegram_standin::IncomingMessage;

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// One HTTP response read from `reader`: status and body (by Content-Length).
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a response",
        ));
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {status_line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `request` (raw bytes) on a new connection and reads one response.
fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = connect(addr);
    stream.write_all(request)?;
    read_response(&mut BufReader::new(stream))
}

fn post(path: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

fn get_me_works(addr: SocketAddr) -> bool {
    matches!(
        exchange(addr, &get(&format!("/bot{}/getMe", token()))),
        Ok((200, _))
    )
}

// ---------------------------------------------------------------------------------------------
// "Bodies as JSON, form or query" (the Bot API takes all of them).

#[test]
fn send_message_with_its_parameters_in_the_query_string() {
    let standin = start();
    let path = format!(
        "/bot{}/sendMessage?chat_id=42&text=from%20the%20query",
        token()
    );
    let (status, body) = exchange(standin.addr(), &post(&path, "application/json", "")).unwrap();
    assert_eq!(
        status, 200,
        "promise broken: bodies as JSON, form or query; sendMessage with chat_id and text in \
         the query string is answered {status} {body}"
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["result"]["text"], "from the query");
}

#[test]
fn send_message_with_a_form_body() {
    let standin = start();
    let path = format!("/bot{}/sendMessage", token());
    let request = post(
        &path,
        "application/x-www-form-urlencoded",
        "chat_id=42&text=from+a+form%21",
    );
    let (status, body) = exchange(standin.addr(), &request).unwrap();
    assert_eq!(
        status, 200,
        "promise broken: bodies as JSON, form or query; sendMessage with a form body is \
         answered {status} {body}"
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["result"]["text"], "from a form!");
    assert_eq!(standin.sent()[0].chat_id, 42);
}

#[test]
fn get_updates_offset_in_the_query_string_confirms_updates() {
    let standin = start();
    let id = standin.post_message(&IncomingMessage::new(7, "/start"));
    let first = exchange(standin.addr(), &get(&format!("/bot{}/getUpdates", token()))).unwrap();
    let update_id = serde_json::from_str::<Value>(&first.1).unwrap()["result"][0]["update_id"]
        .as_i64()
        .expect("the update");
    let _ = id;
    let path = format!(
        "/bot{}/getUpdates?offset={}&timeout=0",
        token(),
        update_id + 1
    );
    let (status, body) = exchange(standin.addr(), &get(&path)).unwrap();
    let result = serde_json::from_str::<Value>(&body).unwrap()["result"].clone();
    assert_eq!(
        (status, result.clone()),
        (200, json!([])),
        "promise broken: bodies as JSON, form or query; getUpdates?offset=N+1 did not confirm \
         update N (offset in the query is ignored): {result}"
    );
}

// ---------------------------------------------------------------------------------------------
// Keep-alive; malformed requests; huge bodies.

#[test]
fn keep_alive_carries_many_requests_including_pipelined_ones() {
    let standin = start();
    let mut stream = connect(standin.addr());
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let get_me = get(&format!("/bot{}/getMe", token()));
    for _ in 0..5 {
        stream.write_all(&get_me).unwrap();
        assert_eq!(read_response(&mut reader).unwrap().0, 200);
    }
    // Three requests in one write.
    let mut three = get_me.clone();
    three.extend(post(
        &format!("/bot{}/sendMessage", token()),
        "application/json",
        r#"{"chat_id":5,"text":"pipelined"}"#,
    ));
    three.extend(&get_me);
    stream.write_all(&three).unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| read_response(&mut reader).unwrap().0)
        .collect();
    assert_eq!(statuses, [200, 200, 200], "keep-alive and pipelining");
}

#[test]
fn malformed_requests_get_400_and_the_server_serves_others() {
    let standin = start();
    let addr = standin.addr();
    let bad: [&[u8]; 5] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"POST /botx/getMe HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        // A chunk size that is not hex: the body cannot be read.
        b"POST /botx/getMe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n\r\n",
        b"GET /bot x/getMe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
    ];
    for request in bad {
        let answer = exchange(addr, request);
        assert!(
            matches!(answer, Ok((400, _))),
            "a malformed request gets a 400: {:?} -> {answer:?}",
            String::from_utf8_lossy(request)
        );
        assert!(
            get_me_works(addr),
            "the server serves others after {request:?}"
        );
    }
    // Bad JSON, a non-UTF-8 body, a JSON array: 400 on a connection that stays usable.
    let mut stream = connect(addr);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let path = format!("/bot{}/sendMessage", token());
    for body in [&b"{not json"[..], b"\xff\xfe", b"[1,2,3]", b"null"] {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend(body);
        stream.write_all(&request).unwrap();
        let (status, text) = read_response(&mut reader).unwrap();
        assert_eq!(status, 400, "{body:?} -> {text}");
    }
    stream
        .write_all(&get(&format!("/bot{}/getMe", token())))
        .unwrap();
    assert_eq!(read_response(&mut reader).unwrap().0, 200);
}

#[test]
fn a_body_over_64_mib_is_refused_and_the_server_keeps_serving() {
    let standin = start();
    let addr = standin.addr();
    let size = 64 * 1024 * 1024 + 1;
    let mut stream = connect(addr);
    let head = format!(
        "POST /bot{}/sendMessage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n",
        token()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer before it has read everything: write from a thread.
    let mut writer = stream.try_clone().unwrap();
    let writing = std::thread::spawn(move || {
        let chunk = vec![b' '; 1024 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            if writer.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
    });
    let answer = read_response(&mut BufReader::new(stream));
    let _ = writing.join();
    assert!(
        matches!(answer, Ok((400 | 413, _))),
        "promise broken: a body over 64 MiB is refused: {answer:?}"
    );
    assert!(
        get_me_works(addr),
        "promise broken: a huge body is refused without the server falling over"
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency: held polls, disconnects.

#[test]
fn hundreds_of_held_long_polls_do_not_starve_a_send_message() {
    let standin = start();
    let addr = standin.addr();
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut stream = connect(addr);
        stream
            .write_all(&get("/control/sent?after=1000000&wait_ms=7000"))
            .unwrap();
        held.push(stream);
    }
    // And the bot's own long poll.
    let mut poll = connect(addr);
    poll.write_all(&post(
        &format!("/bot{}/getUpdates", token()),
        "application/json",
        r#"{"timeout":7}"#,
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let begun = Instant::now();
    let answer = exchange(
        addr,
        &post(
            &format!("/bot{}/sendMessage", token()),
            "application/json",
            r#"{"chat_id":9,"text":"through the crowd"}"#,
        ),
    );
    let took = begun.elapsed();
    assert!(matches!(answer, Ok((200, _))), "{answer:?}");
    assert!(
        took < Duration::from_secs(2),
        "promise broken: hundreds of held long polls do not starve a sendMessage; it took {took:?}"
    );
    // A new message reaches the held getUpdates at once.
    standin.post_message(&IncomingMessage::new(9, "hello"));
    let mut reader = BufReader::new(poll);
    let (status, body) = read_response(&mut reader).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello"), "{body}");
    drop(held);
}

#[test]
fn a_client_that_leaves_mid_long_poll_does_not_take_the_next_update() {
    let standin = start();
    let addr = standin.addr();
    let path = format!("/bot{}/getUpdates", token());
    {
        let mut leaving = connect(addr);
        leaving
            .write_all(&post(&path, "application/json", r#"{"timeout":5}"#))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    } // closed mid-poll
    std::thread::sleep(Duration::from_millis(100));
    let (done, got) = mpsc::channel();
    let body = post(&path, "application/json", r#"{"timeout":5}"#);
    std::thread::spawn(move || {
        let _ = done.send(exchange(addr, &body));
    });
    std::thread::sleep(Duration::from_millis(300));
    standin.post_message(&IncomingMessage::new(11, "after the leaver"));
    let answer = got
        .recv_timeout(Duration::from_secs(3))
        .expect("promise broken: the next poller gets the update at once");
    let (status, body) = answer.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("after the leaver"),
        "promise broken: a client that disconnects mid-long-poll does not lose the next update \
         for others: {body}"
    );
}

// ---------------------------------------------------------------------------------------------
// The command line: bad input is exit 2 (clap's usage error), never a panic.

fn cli(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_telegram-standin"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn describe(out: &std::process::Output) -> String {
    format!(
        "exit {:?}; stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Runs `args` (split at white space), which must exit 2 without a panic; `shown` is how a
/// failure names them.
fn refused_not_a_panic(args: &str, shown: &str) {
    let out = cli(&args.split_whitespace().collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2) && !stderr.contains("panicked"),
        "promise broken: the command line rejects bad input with exit 2; {shown}: {}",
        describe(&out)
    );
}

/// Runs `args`, which must exit 2; `shown` is how a failure names them.
fn a_usage_error(args: &[&str], shown: &str) {
    let out = cli(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "promise broken: the command line rejects bad input with exit 2; {shown}: {}",
        describe(&out)
    );
}

#[test]
fn help_and_usage_errors_exit_as_clap_says() {
    assert_eq!(cli(&["--help"]).status.code(), Some(0));
    for args in [
        &[][..],
        &["frobnicate"],
        &["serve", "--latency-ms", "soon"],
        &["serve", "--latency-ms", "-5"],
        &["chat"],
        &["load"],
        &["load", "--users", "0"],
        &["load", "--users", "3", "--first-user", "0"],
        &["health", "--server"],
        &["stats", "extra"],
    ] {
        let out = cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
}

#[test]
fn load_with_a_huge_timeout_is_refused_not_a_panic() {
    refused_not_a_panic(
        "load --server http://127.0.0.1:9 --users 1 --timeout-secs 18446744073709551615",
        "`load --timeout-secs 18446744073709551615`",
    );
}

#[test]
fn load_with_user_ids_past_i64_is_refused_not_a_panic() {
    refused_not_a_panic(
        "load --server http://127.0.0.1:9 --users 2 --first-user 9223372036854775807",
        "`load --users 2 --first-user 9223372036854775807`",
    );
}

#[test]
fn load_with_absurdly_many_users_is_refused_not_a_panic() {
    refused_not_a_panic(
        "load --server http://127.0.0.1:9 --users 4611686018427387904",
        "`load --users 4611686018427387904` (2^62)",
    );
}

#[test]
fn chat_with_a_huge_wait_is_refused_not_a_panic() {
    let standin = start();
    let url = standin.url();
    let out = cli(&[
        "chat",
        "--server",
        &url,
        "--wait-ms",
        "18446744073709551615",
        "hello",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 2)) && !stderr.contains("panicked"),
        "promise broken: the command line rejects bad input with exit 2 (or serves it); \
         `chat --wait-ms 18446744073709551615 hello`: {}",
        describe(&out)
    );
}

#[test]
fn serve_with_a_listen_address_that_is_not_one_is_a_usage_error() {
    a_usage_error(
        &["serve", "--listen", "not an address"],
        "`serve --listen 'not an address'`",
    );
}

#[test]
fn health_with_a_server_that_is_not_a_url_is_a_usage_error() {
    a_usage_error(
        &["health", "--server", "not a url"],
        "`health --server 'not a url'`",
    );
}
