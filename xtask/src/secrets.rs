//! The environment file's secrets: the file is parsed with `dotenvy` (a malformed line is refused
//! by its number, never by its content), and every value in it is scrubbed from what this program
//! shows or stores.
//!
//! The scrub rule:
//! - every non-empty value of every environment file the stack uses is a secret (`BOT_TOKEN`
//!   first), and so are: the token's secret part (after the first `:`), since tools print it
//!   split or URL-encoded; a value's text as written in the file (before dotenvy's quotes,
//!   escapes and `$VAR` substitution, which Compose does not all do); the URL-encoded form of
//!   each; and the content of a malformed line;
//! - a secret of at least [`MIN_LEN`] characters is replaced wherever it appears, except that
//!   one made of digits alone must not touch other letters or digits (so `ADMIN_IDS=123456`
//!   leaves image ids and times alone);
//! - a shorter one (`1`, `true`, `info`) only where it stands as its own variable's value:
//!   `KEY=v`, `KEY: v`, `"KEY":"v"`; elsewhere it is left alone, or every digit would go;
//! - the replacement names the variable: `<BOT_TOKEN>`, as the bot's own redaction does.
//!
//! Files are registered as the stack meets them ([`register_file`]); [`scrub`] uses every value
//! registered so far. What commands print is scrubbed where it becomes text to show (errors,
//! log tails), and again where text leaves the program (the printer, the JSON report, the deploy
//! history). What a command returns as data (ids, JSON, paths) is parsed by the caller as it
//! is: a mount path that happens to equal a value must not be corrupted.

use std::cell::Cell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;

use anyhow::Context;
use serde_json::Value;

use crate::exit;

/// Secrets shorter than this are hidden only as their own variable's value.
pub const MIN_LEN: usize = 6;

/// An environment file as Compose gives it to the bot.
#[derive(Debug, Default)]
pub struct EnvFile {
    /// Each `KEY=value`, in the file's order (a later one wins, as in Compose).
    pub vars: Vec<(String, String)>,
}

impl EnvFile {
    /// The value of `key` (the last one when it is set twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        let last = self.vars.iter().rev().find(|(k, _)| k == key);
        last.map(|(_, v)| v.as_str())
    }
}

/// What [`parse`] found: the variables, the secrets to hide, the malformed lines.
#[derive(Debug, Default)]
struct Parsed {
    env: EnvFile,
    secrets: Vec<Secret>,
    malformed: Vec<usize>,
}

/// Reads and registers `path`; refuses it (exit 4) when a line is not KEY=VALUE, naming the
/// line by its number only. Its secrets are registered even then.
pub fn load(path: &Path) -> anyhow::Result<EnvFile> {
    let parsed = read_and_add(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !parsed.malformed.is_empty() {
        return Err(exit::not_ready(malformed_message(path, &parsed.malformed)));
    }
    Ok(parsed.env)
}

/// Registers the secrets of `path` once (a missing or unreadable file adds nothing; a malformed
/// one adds what could be read and its bad lines' content).
pub fn register_file(path: &Path) {
    // Looked up apart: `read_and_add` takes the registry's lock again.
    let known = registry().files.iter().any(|f| f == path);
    if !known && read_and_add(path).is_ok() {
        registry().files.push(path.to_owned());
    }
}

/// Reads and parses `path`, and registers its secrets.
fn read_and_add(path: &Path) -> std::io::Result<Parsed> {
    let text = std::fs::read(path)?;
    let name = path.file_name().unwrap_or(path.as_os_str());
    let parsed = parse(&String::from_utf8_lossy(&text), &name.to_string_lossy());
    add(&parsed.secrets);
    Ok(parsed)
}

/// Registers the values of an environment file's text (for the tests of the layers that scrub).
#[cfg(test)]
pub fn register_text(text: &str) {
    add(&parse(text, "test.env").secrets);
}

/// `text` with every registered secret replaced by its variable's name.
pub fn scrub(text: &str) -> String {
    scrub_with(&registry().secrets, text)
}

/// Scrubs every string (and object key) in a JSON value.
pub fn scrub_json(value: &mut Value) {
    scrub_json_with(&registry().secrets, value);
}

fn scrub_json_with(secrets: &[Secret], value: &mut Value) {
    match value {
        Value::String(s) => *s = scrub_with(secrets, s),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_json_with(secrets, v)),
        Value::Object(map) => {
            for (key, mut v) in std::mem::take(map) {
                scrub_json_with(secrets, &mut v);
                map.insert(scrub_with(secrets, &key), v);
            }
        }
        _ => {}
    }
}

fn malformed_message(path: &Path, lines: &[usize]) -> String {
    let path = path.display();
    let numbers: Vec<String> = lines.iter().map(usize::to_string).collect();
    let which = match lines {
        [one] => format!("line {one} of {path} is"),
        _ => format!("lines {} of {path} are", numbers.join(", ")),
    };
    format!(
        "{which} not KEY=VALUE (the content is not shown: it may hold a secret). Write each setting as NAME=value on a line of its own (NAME: letters, digits and _, not starting with a digit; quote a value holding spaces or #, e.g. NAME=\"a b\"), start a comment with #, or remove the line"
    )
}

/// One value to hide, and how.
#[derive(Debug, Clone)]
struct Secret {
    /// The variable it belongs to: the replacement is `<key>`.
    key: String,
    /// The text to hide.
    value: String,
    /// Hidden wherever it appears (else only as `KEY=value`): [`MIN_LEN`] characters or more.
    everywhere: bool,
    /// Made of digits alone: never hidden inside a longer run of letters and digits.
    digits: bool,
}

impl Secret {
    fn new(key: &str, value: &str) -> Option<Secret> {
        let value = value.trim();
        (!value.is_empty()).then(|| Secret {
            key: key.to_owned(),
            value: value.to_owned(),
            everywhere: value.chars().count() >= MIN_LEN,
            digits: value.bytes().all(|b| b.is_ascii_digit()),
        })
    }
}

struct Registry {
    files: Vec<PathBuf>,
    /// Longest first, so that a value holding another is hidden whole.
    secrets: Vec<Secret>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    files: Vec::new(),
    secrets: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

fn add(secrets: &[Secret]) {
    merge(&mut registry().secrets, secrets);
}

/// Adds `new` to `all`, without duplicates (the first variable named keeps a value hidden
/// everywhere; a short one is kept per variable), longest first.
fn merge(all: &mut Vec<Secret>, new: &[Secret]) {
    for secret in new {
        if !all
            .iter()
            .any(|s| s.value == secret.value && (secret.everywhere || s.key == secret.key))
        {
            all.push(secret.clone());
        }
    }
    all.sort_by_key(|s| std::cmp::Reverse(s.value.len()));
}

/// Parses an environment file's text with dotenvy. `name` names the file in the placeholders of
/// malformed lines.
fn parse(text: &str, name: &str) -> Parsed {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let fed = Rc::new(Cell::new(0));
    let reader = LineByLine {
        lines: &lines,
        offset: 0,
        fed: fed.clone(),
    };
    let mut parsed = Parsed::default();
    let mut secrets = Vec::new();
    let mut done = 0; // physical lines taken by the items before
    for item in dotenvy::from_read_iter(reader) {
        let now = fed.get();
        let chunk = &lines[done.min(lines.len())..now.min(lines.len())];
        done = now;
        match item {
            Ok((key, value)) => {
                let written = as_written(chunk);
                for raw in std::iter::once(&value).chain(&written) {
                    secrets.extend(Secret::new(&key, raw));
                }
                parsed.env.vars.push((key, value));
            }
            Err(dotenvy::Error::LineParse(line, _)) => {
                // The bad logical line ends at the last physical line read.
                let inner = line.trim_end_matches(['\r', '\n']).matches('\n').count();
                let first = now.saturating_sub(inner).max(1);
                let content = line.trim();
                if bare_key(content) {
                    continue; // `NAME` alone: Compose passes NAME from its own environment
                }
                let placeholder = format!("line {first} of {name}");
                secrets.extend(Secret::new(&placeholder, content));
                // And what follows its first `=` or blank: the value, if the line has one.
                let at_blank = content.split_once(char::is_whitespace);
                for (_, rest) in [content.split_once('='), at_blank].into_iter().flatten() {
                    secrets.extend(Secret::new(&placeholder, rest));
                    secrets.extend(Secret::new(&placeholder, unquote(rest.trim())));
                }
                parsed.malformed.push(first);
            }
            // Reading a string cannot fail; substitution errors do not exist in 0.15.
            Err(_) => {}
        }
    }
    if let Some(token) = parsed.env.get("BOT_TOKEN")
        && let Some((_, secret_part)) = token.split_once(':')
    {
        secrets.extend(Secret::new("BOT_TOKEN", secret_part));
    }
    // The token first, so that a value also pasted elsewhere is named after it.
    secrets.sort_by_key(|s| s.key != "BOT_TOKEN");
    // URL-encoded, with upper- and lower-case hex digits.
    for s in secrets.clone() {
        for encoded in [true, false].map(|upper| url_encode(&s.value, upper)) {
            if encoded != s.value {
                secrets.extend(Secret::new(&s.key, &encoded));
            }
        }
    }
    merge(&mut parsed.secrets, &secrets);
    parsed
}

/// The value of the assignment in `chunk` (the physical lines of one item, after any comments
/// and blank lines before it) as written: after the first `=`, and without its quotes.
fn as_written(chunk: &[&str]) -> Vec<String> {
    let logical: String = chunk
        .iter()
        .skip_while(|l| l.trim().is_empty() || l.trim().starts_with('#'))
        .copied()
        .collect();
    let raw = logical.split_once('=').map(|(_, raw)| raw.trim());
    raw.map_or_else(Vec::new, |raw| {
        vec![raw.to_owned(), unquote(raw).to_owned()]
    })
}

fn unquote(text: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return inner;
        }
    }
    text
}

/// `NAME` or `export NAME` alone.
fn bare_key(line: &str) -> bool {
    let name = line.strip_prefix("export ").unwrap_or(line).trim();
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Percent-encodes every byte outside RFC 3986's unreserved characters.
fn url_encode(text: &str, upper: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ if upper => format!("%{b:02X}"),
            _ => format!("%{b:02x}"),
        })
        .collect()
}

/// Hands dotenvy's buffered reader one physical line per read, and counts the lines handed out:
/// after each item, the count is the number of the last line that item read.
struct LineByLine<'a> {
    lines: &'a [&'a str],
    /// How much of the next line was handed out already, in bytes.
    offset: usize,
    /// The lines handed out whole, so the index of the next one.
    fed: Rc<Cell<usize>>,
}

impl Read for LineByLine<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(line) = self.lines.get(self.fed.get()) else {
            return Ok(0);
        };
        let n = (&line.as_bytes()[self.offset..]).read(buf)?;
        self.offset += n;
        if self.offset == line.len() {
            self.fed.set(self.fed.get() + 1);
            self.offset = 0;
        }
        Ok(n)
    }
}

fn is_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// The secret that starts at byte `at` of `text`: how many bytes it covers and what replaces
/// them.
fn secret_at(secrets: &[Secret], text: &str, at: usize) -> Option<(usize, String)> {
    let rest = &text[at..];
    let before = text[..at].chars().next_back();
    for secret in secrets.iter().filter(|s| s.everywhere) {
        if !rest.starts_with(&secret.value) {
            continue;
        }
        let after = rest[secret.value.len()..].chars().next();
        if secret.digits && (is_word(before) || is_word(after)) {
            continue;
        }
        return Some((secret.value.len(), format!("<{}>", secret.key)));
    }
    // A short value, as its own variable's value: KEY=v, KEY: v, "KEY":"v", KEY='v'.
    if is_word(before) {
        return None;
    }
    for secret in secrets.iter().filter(|s| !s.everywhere) {
        let Some(after_key) = rest.strip_prefix(secret.key.as_str()) else {
            continue;
        };
        let after_key = after_key.strip_prefix(['"', '\'']).unwrap_or(after_key);
        let Some(after_sign) = after_key.trim_start_matches(' ').strip_prefix(['=', ':']) else {
            continue;
        };
        let value_at = after_sign.trim_start_matches(' ');
        let value_at = value_at.strip_prefix(['"', '\'']).unwrap_or(value_at);
        let Some(after_value) = value_at.strip_prefix(secret.value.as_str()) else {
            continue;
        };
        if is_word(after_value.chars().next()) {
            continue;
        }
        let prefix = rest.len() - value_at.len();
        let covered = rest.len() - after_value.len();
        return Some((covered, format!("{}<{}>", &rest[..prefix], secret.key)));
    }
    None
}

fn scrub_with(secrets: &[Secret], text: &str) -> String {
    if secrets.is_empty() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while at < text.len() {
        if let Some((len, replacement)) = secret_at(secrets, text, at) {
            out.push_str(&text[copied..at]);
            out.push_str(&replacement);
            at += len;
            copied = at;
        } else {
            at += text[at..].chars().next().map_or(1, char::len_utf8);
        }
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "424242:SECRETsecretSECRETsecret";

    fn scrubbed(file: &str, text: &str) -> String {
        scrub_with(&parse(file, ".env").secrets, text)
    }

    #[test]
    fn a_malformed_line_is_refused_by_its_number_never_by_its_content() {
        let file =
            format!("# settings\nBOT_TOKEN={TOKEN}\n\nMY SECRET=hunter2-hunter2\nRUST_LOG=info\n");
        let parsed = parse(&file, ".env");
        assert_eq!(parsed.malformed, vec![4]);
        assert_eq!(parsed.env.get("BOT_TOKEN"), Some(TOKEN));
        assert_eq!(parsed.env.get("RUST_LOG"), Some("info"), "read on after it");
        let message = malformed_message(Path::new("/srv/bot/.env"), &parsed.malformed);
        assert!(
            message.starts_with("line 4 of /srv/bot/.env is not KEY=VALUE"),
            "{message}"
        );
        assert!(!message.contains("hunter2") && !message.contains("MY SECRET"));
        // What a tool prints of the bad line is hidden too, named by its number.
        for (text, expected) in [
            (
                "line 4: unexpected character \" \" in variable name \"MY SECRET=hunter2-hunter2\"",
                "line 4: unexpected character \" \" in variable name \"<line 4 of .env>\"",
            ),
            ("got hunter2-hunter2", "got <line 4 of .env>"),
        ] {
            assert_eq!(scrubbed(&file, text), expected, "{text}");
        }
    }

    #[test]
    fn the_line_number_counts_comments_blank_lines_and_quoted_values_over_several_lines() {
        let file = "A=1\n# x\n\nB=\"two\nlines\"\nC='x' y\nD=4\n\"unterminated\n";
        let parsed = parse(file, ".env");
        assert_eq!(parsed.malformed, vec![6, 8], "{parsed:?}");
        assert_eq!(parsed.env.get("B"), Some("two\nlines"));
        assert_eq!(parsed.env.get("D"), Some("4"));
        // A name alone takes its value from Compose's environment: not malformed.
        let parsed = parse("\u{feff}BOT_TOKEN=1:abcdef\nHOME\nexport PATH\n", ".env");
        assert!(parsed.malformed.is_empty(), "{parsed:?}");
        assert_eq!(parsed.env.get("BOT_TOKEN"), Some("1:abcdef"), "BOM skipped");
    }

    #[test]
    fn every_value_and_the_tokens_secret_part_are_scrubbed_from_any_text() {
        let file = format!(
            "BOT_TOKEN={TOKEN}\nPROXY_URL=\"http://u:p%ss@relay:3128\"\nPLAIN=pa$$word-123\nADMIN_IDS=12345678\nDEBUG=1\nRUST_LOG=info\n"
        );
        let get_me = format!("GET https://api.telegram.org/bot{TOKEN}/getMe");
        for (text, expected) in [
            (
                &*get_me,
                "GET https://api.telegram.org/bot<BOT_TOKEN>/getMe",
            ),
            ("split: SECRETsecretSECRETsecret", "split: <BOT_TOKEN>"),
            (
                "encoded: 424242%3ASECRETsecretSECRETsecret, 424242%3aSECRETsecretSECRETsecret",
                "encoded: <BOT_TOKEN>, <BOT_TOKEN>",
            ),
            (
                "proxy http://u:p%ss@relay:3128 refused",
                "proxy <PROXY_URL> refused",
            ),
            (
                "as written pa$$word-123, and substituted: pa-123",
                "as written <PLAIN>, and substituted: <PLAIN>",
            ),
            ("admins 12345678.", "admins <ADMIN_IDS>."),
        ] {
            assert_eq!(scrubbed(&file, text), expected, "{text}");
        }
    }

    #[test]
    fn short_values_are_hidden_only_as_their_own_variables_value() {
        let file = "DEBUG=1\nRUST_LOG=info\nADMIN_IDS=123456\n";
        for (text, expected) in [
            (
                "exit code 1 after 10 s, revision 1, info: all fine",
                "exit code 1 after 10 s, revision 1, info: all fine",
            ),
            (
                "DEBUG=1 \"RUST_LOG\":\"info\" RUST_LOG: info DEBUG=10 XDEBUG=1",
                "DEBUG=<DEBUG> \"RUST_LOG\":\"<RUST_LOG>\" RUST_LOG: <RUST_LOG> DEBUG=10 XDEBUG=1",
            ),
            // A value of digits alone never eats into ids or times.
            (
                "sha256:ab123456cd 20261234560000Z ids 123456",
                "sha256:ab123456cd 20261234560000Z ids <ADMIN_IDS>",
            ),
        ] {
            assert_eq!(scrubbed(file, text), expected, "{text}");
        }
    }

    #[test]
    fn json_is_scrubbed_inside_its_strings() {
        let file = format!("BOT_TOKEN={TOKEN}\nQUOTE='a \"quoted\" value'\n");
        let secrets = parse(&file, ".env").secrets;
        let mut value = serde_json::json!({
            "error": format!("log: token {TOKEN} and a \"quoted\" value"),
            "steps": [{"detail": "SECRETsecretSECRETsecret"}],
            "n": 1,
        });
        scrub_json_with(&secrets, &mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "error": "log: token <BOT_TOKEN> and <QUOTE>",
                "steps": [{"detail": "<BOT_TOKEN>"}],
                "n": 1,
            })
        );
    }

    #[test]
    fn a_file_is_loaded_refused_and_registered() {
        let dir = crate::testing::temp_dir("secrets");
        let good = dir.join("good.env");
        std::fs::write(&good, "BOT_TOKEN=777:registered-UNIQUE-value\n").unwrap();
        assert_eq!(
            load(&good).unwrap().get("BOT_TOKEN"),
            Some("777:registered-UNIQUE-value")
        );
        assert_eq!(
            scrub("x 777:registered-UNIQUE-value y registered-UNIQUE-value"),
            "x <BOT_TOKEN> y <BOT_TOKEN>"
        );
        let bad = dir.join("bad.env");
        std::fs::write(&bad, "OK=1\nnot an assignment: bad-UNIQUE-line\n").unwrap();
        let error = load(&bad).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::NotReady);
        let message = error.to_string();
        assert!(
            message.contains(&format!("line 2 of {}", bad.display())),
            "{message}"
        );
        assert!(!message.contains("bad-UNIQUE"), "{message}");
        assert!(!scrub("echo: not an assignment: bad-UNIQUE-line").contains("bad-UNIQUE"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
