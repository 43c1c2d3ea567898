//! Which Docker engine the tasks drive: `--host`, else `--context`, else `DOCKER_HOST`, else the
//! current Docker context. The choice is made once, before any thread or child starts, and
//! handed to every `docker` and Compose command as `DOCKER_HOST`: the Docker CLI and both
//! Composes read it, where Compose 1.x ignores `docker context use`.

use anyhow::Context;
use serde_json::Value;

use crate::exit;

/// The address of the local engine, when nothing names another.
const LOCAL: &str = "unix:///var/run/docker.sock";

/// The engine a task drives, as its address (`None`: the local default socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    host: Option<String>,
}

/// Where an `ssh://` engine is: what the `ssh` command needs to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The login, when the address names one.
    pub user: Option<String>,
    /// The server's name or address.
    pub server: String,
    /// The port, when the address names one.
    pub port: Option<u16>,
}

impl SshTarget {
    /// `ssh`'s arguments before the remote command: `[-l user] [-p port] -- server`.
    pub fn args(&self) -> Vec<String> {
        let user = self.user.iter().flat_map(|u| ["-l".to_owned(), u.clone()]);
        let port = self.port.iter().flat_map(|p| ["-p".into(), p.to_string()]);
        let server = ["--".to_owned(), self.server.clone()];
        user.chain(port).chain(server).collect()
    }
}

impl Engine {
    /// The engine this process's environment names (after [`Engine::apply`], the chosen one).
    pub fn current() -> Engine {
        Engine::from_host(std::env::var("DOCKER_HOST").ok())
    }

    fn from_host(host: Option<String>) -> Engine {
        let local = ["unix:///var/run/docker.sock", "unix:///run/docker.sock"];
        let host = host.filter(|h| !h.trim().is_empty());
        let host = host.filter(|h| !local.contains(&h.trim_end_matches('/')));
        Engine { host }
    }

    /// The address, for messages and reports ("the local engine" when it is the default one).
    pub fn describe(&self) -> String {
        self.remote().unwrap_or("the local engine").into()
    }

    /// The address when the engine is not this machine's default one.
    pub fn remote(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The sub-folder of the backup folder for this engine's projects: none for the local
    /// engine (`backups/<project>`), else the address made a file name, every character but
    /// letters, digits, `.`, `-` and `@` written as `_` and its hex code
    /// (`backups/ssh-deploy@server_3a2222/<project>`): two engines never share a folder, so
    /// two servers with the same project name never share a history or a backup.
    pub fn folder(&self) -> Option<String> {
        let host = self.host.as_deref()?;
        let (scheme, rest) = host.split_once("://").unwrap_or(("host", host));
        let mut folder = format!("{scheme}-");
        for byte in rest.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'@') {
                folder.push(char::from(byte));
            } else {
                folder.push_str(&format!("_{byte:02x}"));
            }
        }
        Some(folder)
    }

    /// The `ssh` target when the engine is reached through ssh.
    pub fn ssh(&self) -> Option<SshTarget> {
        let rest = self.host.as_deref()?.strip_prefix("ssh://")?;
        let rest = rest.trim_end_matches('/');
        let (user, server) = match rest.rsplit_once('@') {
            Some((user, server)) => (Some(user.to_owned()), server),
            None => (None, rest),
        };
        let (server, port) = split_port(server).unwrap_or((server, None));
        let server: String = server.trim_start_matches('[').trim_end_matches(']').into();
        Some(SshTarget { user, server, port })
    }

    /// The address to hand to Docker and Compose.
    pub fn address(&self) -> &str {
        self.host.as_deref().unwrap_or(LOCAL)
    }

    /// Makes this the engine of every command the process runs from now on. Set even for the
    /// local engine: Compose would otherwise take the DOCKER_HOST a deploy wrote to
    /// `docker/.env` for the by-hand commands.
    ///
    /// Call it before any thread starts: it changes the process's environment.
    pub fn apply(&self) {
        // SAFETY: called from `main` before the signal thread or any other thread exists, so
        // no other thread reads the environment while it changes.
        unsafe {
            std::env::set_var("DOCKER_HOST", self.address());
            // DOCKER_HOST now says it all; with both set, the Docker CLI refuses to choose.
            std::env::remove_var("DOCKER_CONTEXT");
        }
    }
}

/// Chooses the engine: `--host`, else `--context`, else `DOCKER_HOST`, else the current Docker
/// context (`DOCKER_CONTEXT` or `docker context use`).
pub fn resolve(host: Option<&str>, context: Option<&str>) -> anyhow::Result<Engine> {
    if let Some(host) = host {
        return Ok(Engine::from_host(Some(checked_address(host)?)));
    }
    if let Some(name) = context {
        return context_engine(Some(name));
    }
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        return Ok(Engine::from_host(Some(checked_address(&host)?)));
    }
    match context_engine(None) {
        Ok(engine) => Ok(engine),
        // Without the docker command the daemon check says what is missing.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some() => Ok(Engine { host: None }),
        Err(e) => Err(e),
    }
}

/// The address as Docker and Compose take it, or a usage error naming how to write it: a
/// trailing `/` is dropped and an ssh or tcp host name lower-cased (one server, one history).
fn checked_address(host: &str) -> anyhow::Result<String> {
    let bad = |why: &str| {
        exit::usage(format!(
            "the engine address {host:?} is not one Docker takes ({why}): write ssh://user@server (or ssh://user@server:port), tcp://server:2376 or unix:///path/to/docker.sock"
        ))
    };
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it has a space"));
    }
    let Some((scheme, rest)) = host.split_once("://") else {
        return Err(bad("no scheme"));
    };
    match scheme {
        "unix" | "npipe" | "fd" => {
            if rest.len() < 2 || (scheme == "unix" && !rest.starts_with('/')) {
                return Err(bad("no absolute path to the socket"));
            }
            Ok(host.to_owned())
        }
        "ssh" | "tcp" => {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            if rest.contains('/') || rest.contains('?') || rest.contains('#') {
                return Err(bad("a path after the server"));
            }
            let (user, server) = match rest.rsplit_once('@') {
                Some(("", _)) => return Err(bad("an empty user")),
                Some(_) if scheme == "tcp" => return Err(bad("a user in a tcp address")),
                Some((user, server)) => (Some(user), server),
                None => (None, rest),
            };
            let (name, port) = split_port(server).map_err(|why| bad(&why))?;
            if name.is_empty() || name == "[]" {
                return Err(bad("no server"));
            }
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let name = name.to_ascii_lowercase();
            Ok(format!("{scheme}://{user}{name}{port}"))
        }
        _ => Err(bad("an unknown scheme")),
    }
}

/// `server[:port]` or `[v6]:port` taken apart; the port must be 1 to 65535.
fn split_port(server: &str) -> Result<(&str, Option<u16>), String> {
    let split = if server.starts_with('[') {
        let split = server.split_once("]:");
        split.map(|(name, port)| (&server[..name.len() + 1], port))
    } else {
        server.rsplit_once(':')
    };
    let Some((name, port)) = split else {
        return Ok((server, None));
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((name, Some(port))),
        _ => Err(format!("the port {port:?} is not a number from 1 to 65535")),
    }
}

/// The engine of a Docker context (`None`: the current one).
fn context_engine(name: Option<&str>) -> anyhow::Result<Engine> {
    let out = std::process::Command::new("docker")
        .args(["context", "inspect"])
        .args(name)
        .stdin(std::process::Stdio::null())
        .output()?;
    let shown = name.unwrap_or("(current)");
    if !out.status.success() {
        let set_by = name.map_or("DOCKER_CONTEXT or `docker context use`", |_| "--context");
        return Err(exit::usage(format!(
            "there is no Docker context {shown} (named by {set_by}): {}; `docker context ls` lists them, or pass --host",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let inspected: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`docker context inspect {shown}` printed no JSON"))?;
    let context = &inspected[0];
    let host = context["Endpoints"]["docker"]["Host"].as_str();
    let host = host.with_context(|| format!("the Docker context {shown} names no engine"))?;
    let has_tls = context["TLSMaterial"]
        .as_object()
        .is_some_and(|m| !m.is_empty());
    if has_tls {
        return Err(exit::usage(format!(
            "the Docker context {} reaches its engine with TLS certificates, which Compose 1.x cannot take from a context: set DOCKER_HOST={host}, DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH to the certificates' folder instead",
            context["Name"].as_str().unwrap_or(shown)
        )));
    }
    Ok(Engine::from_host(Some(checked_address(host)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(host: &str) -> Engine {
        Engine::from_host(Some(host.to_owned()))
    }

    #[test]
    fn the_default_socket_is_the_local_engine() {
        for local in [
            "unix:///var/run/docker.sock",
            "unix:///run/docker.sock/",
            "",
        ] {
            assert_eq!(engine(local).remote(), None, "{local}");
            assert_eq!(engine(local).folder(), None, "{local}");
        }
        assert_eq!(Engine::from_host(None).describe(), "the local engine");
    }

    #[test]
    fn a_remote_engine_has_a_folder_of_its_own() {
        for (host, folder) in [
            ("ssh://deploy@server:2222", "ssh-deploy@server_3a2222"),
            // An alias with an underscore is another engine.
            ("ssh://deploy@server_2222", "ssh-deploy@server_5f2222"),
            ("tcp://10.0.0.5:2376", "tcp-10.0.0.5_3a2376"),
            ("unix:///srv/other.sock", "unix-_2fsrv_2fother.sock"),
        ] {
            assert_eq!(engine(host).folder().unwrap(), folder, "{host}");
        }
    }

    #[test]
    fn ssh_addresses_are_taken_apart() {
        assert_eq!(
            engine("ssh://deploy@server:2222").ssh().unwrap(),
            SshTarget {
                user: Some("deploy".into()),
                server: "server".into(),
                port: Some(2222)
            }
        );
        let plain = engine("ssh://server").ssh().unwrap();
        assert_eq!((plain.user, plain.port), (None, None));
        assert_eq!(engine("ssh://root@[::1]:22").ssh().unwrap().server, "::1");
        assert_eq!(
            engine("ssh://root@127.0.0.1:2222").ssh().unwrap().args(),
            ["-l", "root", "-p", "2222", "--", "127.0.0.1"]
        );
        assert!(engine("tcp://server:2376").ssh().is_none());
    }

    #[test]
    fn an_address_docker_does_not_take_is_refused() {
        for bad in [
            "server",
            "http://server",
            "ssh:/",
            "ssh://deploy@",
            "ssh://@server",
            "ssh://deploy@server:notaport",
            "ssh://deploy@server:99999",
            "ssh://deploy@server:0",
            "ssh://dep loy@server",
            "ssh://deploy@server/path",
            "tcp://user@server:2376",
            "unix://relative.sock",
        ] {
            let error = resolve(Some(bad), None).unwrap_err();
            assert_eq!(exit::code_of(&error), exit::ExitCode::Usage, "{bad}");
        }
        for (host, checked) in [
            ("ssh://a@b", "ssh://a@b"),
            // A trailing slash dropped, the host name lower-cased, the user kept.
            (
                "ssh://Deploy@Server.Example.COM:2222/",
                "ssh://Deploy@server.example.com:2222",
            ),
            ("ssh://root@[::1]:22", "ssh://root@[::1]:22"),
        ] {
            let engine = resolve(Some(host), None).unwrap();
            assert_eq!(engine.remote(), Some(checked), "{host}");
        }
    }
}
