//! Processes the harness starts to compare Switchboard with: the Node.js
//! peers (`loadtest/peers/socketio`, `loadtest/peers/ws`) and, in the
//! per-core mode, the baseline relay in a process of its own. Each prints
//! `listening <port>` once it accepts connections on 127.0.0.1 and exits when
//! its stdin closes (the harness went away); the harness may pin it to CPUs
//! before it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::timeout;

use crate::{affinity, net};

/// How long a peer may take to say `listening <port>`.
const START_WAIT: Duration = Duration::from_secs(30);

/// A running peer process.
pub struct Peer {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    /// Held open: the peer exits when it closes (the harness went away).
    _stdin: Option<ChildStdin>,
}

impl Peer {
    /// Kills the peer and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Where a Node.js peer lives without its `--…-dir` flag: next to this
/// crate's manifest when the binary was built here, else
/// `loadtest/peers/<name>` under the current directory (the workspace root).
pub fn default_dir(name: &str) -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name);
    if built.join("relay.js").is_file() {
        built
    } else {
        Path::new("loadtest/peers").join(name)
    }
}

/// Whether `tool --version` runs; its version, or why not (`what`: the
/// peer that needs it, for the message).
pub async fn tool_version(tool: &str, what: &str) -> Result<String, String> {
    let out = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            format!("{what} needs Node.js and npm on PATH; running `{tool} --version` failed: {e}")
        })?;
    if !out.status.success() {
        return Err(format!(
            "{what} needs Node.js and npm on PATH; `{tool} --version` exited with {}",
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A Node.js peer's directory, checked, with its packages installed
/// (`npm ci`, when `node_modules` is missing); returns it canonical, with
/// node's version.
pub async fn prepare_node(dir: &Path, what: &str, flag: &str) -> Result<(PathBuf, String), String> {
    if !dir.join("relay.js").is_file() {
        return Err(format!(
            "{what}: no relay.js in {} (give {flag})",
            dir.display()
        ));
    }
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let node = tool_version("node", what).await?;
    if !dir.join("node_modules").is_dir() {
        let npm = tool_version("npm", what).await?;
        println!(
            "{what}: installing its packages (npm ci in {}, npm {npm})",
            dir.display()
        );
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("{what}: npm ci: {e}"))?;
        if !status.success() {
            return Err(format!(
                "{what}: `npm ci` in {} failed ({status})",
                dir.display()
            ));
        }
    }
    Ok((dir, node))
}

/// Starts `cmd` (pinned to `cpus` if given) and waits for its `listening
/// <port>` line; its other output lines are printed with `[label]`.
pub async fn spawn_listening(
    mut cmd: Command,
    label: &str,
    cpus: Option<&[usize]>,
) -> Result<Peer, String> {
    // The peer holds the server end of every socket: let it inherit the
    // raised open-files limit.
    net::raise_nofile_limit()?;
    if let Some(cpus) = cpus {
        affinity::pin_command(&mut cmd, cpus)?;
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{label}: cannot start it: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let tag = label.to_string();
    let port = timeout(START_WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(port) = listening_port(&line) {
                return Some(port);
            }
            println!("[{tag}] {line}");
        }
        None
    })
    .await;
    let port = match port {
        Ok(Some(port)) => port,
        Ok(None) => {
            let status = child.wait().await.map_err(|e| e.to_string())?;
            return Err(format!("{label} exited before listening ({status})"));
        }
        Err(_) => {
            let _ = child.start_kill();
            return Err(format!(
                "{label} did not say `listening <port>` within {}s",
                START_WAIT.as_secs()
            ));
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("[{tag}] {line}");
        }
    });
    Ok(Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid,
        child,
        _stdin: stdin,
    })
}

/// The port in a peer's `listening <port>` line.
pub fn listening_port(line: &str) -> Option<u16> {
    line.strip_prefix("listening ")?.trim().parse().ok()
}

/// Starts the Node.js `ws` peer from `dir` (default `loadtest/peers/ws`) on
/// a free loopback port, each agent with `capacity` slots.
pub async fn start_ws(
    dir: Option<&Path>,
    capacity: u32,
    cpus: Option<&[usize]>,
) -> Result<Peer, String> {
    let what = "the Node.js ws peer";
    let dir = dir.map_or_else(|| default_dir("ws"), Path::to_path_buf);
    let (dir, node) = prepare_node(&dir, what, "--ws-peer-dir").await?;
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("relay.js"))
        .args(["--port", "0", "--capacity", &capacity.to_string()])
        .arg("--exit-with-stdin")
        .current_dir(&dir);
    spawn_listening(cmd, "ws peer", cpus)
        .await
        .map_err(|e| format!("{e} (node {node})"))
}

/// Starts the baseline relay as a process of its own: this executable with
/// `--serve-relay`.
pub async fn start_relay(capacity: u32, cpus: Option<&[usize]>) -> Result<Peer, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "--serve-relay",
        "--baseline-port",
        "0",
        "--capacity",
        &capacity.to_string(),
        "--progress",
        "off",
    ]);
    spawn_listening(cmd, "baseline relay", cpus).await
}

/// The lean echo relay ([`crate::echo`]) as a process of its own.
pub async fn start_echo(cpus: Option<&[usize]>) -> Result<Peer, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--serve-echo-relay", "--progress", "off"]);
    spawn_listening(cmd, "echo relay", cpus).await
}

/// A broker started by the harness (`--broker-bin`).
pub struct Broker {
    pub url: String,
    /// The loopback port of `url`.
    pub port: u16,
    pub pid: u32,
    /// The admin token it was given (generated).
    pub token: String,
    child: Child,
}

impl Broker {
    /// Kills the broker and waits for it.
    pub async fn stop(mut self) {
        self.kill().await;
    }

    /// `kill -9` (what `Child::start_kill` sends on Unix), and wait for it
    /// to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// How long a broker started here may take to answer `/healthz`.
const BROKER_START_WAIT: Duration = Duration::from_secs(20);

/// The broker's per-client limits, off for a load test: every simulated
/// customer comes from the one loopback address (flags in `extra` still win).
const NO_CLIENT_LIMITS: &[(&str, &str)] = &[
    ("SWITCHBOARD_MAX_CONNECTIONS", "1000000"),
    ("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "0"),
    ("SWITCHBOARD_SESSIONS_PER_IP_PER_MINUTE", "0"),
    ("SWITCHBOARD_OPEN_SESSIONS_PER_IP", "0"),
    ("SWITCHBOARD_SOCKETS_PER_SESSION", "0"),
    ("SWITCHBOARD_SOCKET_MESSAGES_PER_SECOND", "1000000"),
    ("SWITCHBOARD_CONVERSATION_MESSAGES_PER_SECOND", "1000000"),
    ("SWITCHBOARD_UPLOADS_PER_IP_PER_MINUTE", "0"),
    ("SWITCHBOARD_UPLOAD_BYTES_PER_IP", "0"),
];

/// Starts the broker `bin` on a free loopback port with a generated admin
/// token and `extra` flags, pinned to `cpus`, its output (stdout and stderr)
/// to `log`; returns once `/healthz` answers.
pub async fn start_broker(
    bin: &Path,
    extra: &[&str],
    cpus: &[usize],
    log: &Path,
) -> Result<Broker, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free loopback port: {e}"))?
        .port();
    let token = new_token()?;
    std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    start_broker_on(bin, port, &token, extra, cpus, log).await
}

/// Starts the broker `bin` on loopback `port` with admin `token` and `extra`
/// flags, pinned to `cpus` (none: not pinned), its output appended to
/// `log`; returns once `/healthz` answers. Started again on the same port,
/// token and data dir after a kill, it is the same broker to its clients.
pub async fn start_broker_on(
    bin: &Path,
    port: u16,
    token: &str,
    extra: &[&str],
    cpus: &[usize],
    log: &Path,
) -> Result<Broker, String> {
    let token = token.to_owned();
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .envs(NO_CLIENT_LIMITS.iter().copied())
        .env("SWITCHBOARD_ADMIN_TOKEN", &token)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    if !cpus.is_empty() {
        affinity::pin_command(&mut cmd, cpus)?;
    }
    net::raise_nofile_limit()?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("--broker-bin {}: cannot start it: {e}", bin.display()))?;
    let pid = child.id().unwrap_or(0);
    let url = format!("http://127.0.0.1:{port}");
    let health = net::Target::parse(&url)?.http("/healthz");
    let client = reqwest::Client::new();
    let until = tokio::time::Instant::now() + BROKER_START_WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "--broker-bin {}: the broker exited at start ({status}); its log ({}):\n{}",
                bin.display(),
                log.display(),
                tail(log, 20)
            ));
        }
        let answer =
            net::http_json(&client, reqwest::Method::GET, health.clone(), None, None).await;
        if matches!(&answer, Ok((_, body)) if body["status"] == "ok") {
            break;
        }
        if tokio::time::Instant::now() >= until {
            let _ = child.start_kill();
            return Err(format!(
                "--broker-bin {}: {url}/healthz did not answer ok within {}s; its log ({}):\n{}",
                bin.display(),
                BROKER_START_WAIT.as_secs(),
                log.display(),
                tail(log, 20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Broker {
        url,
        port,
        pid,
        token,
        child,
    })
}

/// 32 hex digits from the kernel's random source.
fn new_token() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("generating an admin token: /dev/urandom: {e}"))?;
    Ok(hex::encode(bytes))
}

/// The last `n` lines of a text file (for an error message).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_tails() {
        let a = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_token().unwrap());
        let dir = std::env::temp_dir().join(format!("lt-tail-{}", std::process::id()));
        std::fs::write(&dir, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&dir, 2), "b\nc");
        assert_eq!(tail(&dir, 9), "a\nb\nc");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(tail(Path::new("/nonexistent/x"), 3), "");
    }

    #[test]
    fn listening_lines() {
        assert_eq!(listening_port("listening 4242"), Some(4242));
        assert_eq!(listening_port("listening 4242\r"), Some(4242));
        assert_eq!(listening_port("listening x"), None);
        assert_eq!(listening_port("[peer] listening 1"), None);
    }

    #[test]
    fn peers_are_found_next_to_the_manifest() {
        for name in ["ws", "socketio"] {
            assert!(default_dir(name).join("relay.js").is_file(), "{name}");
            assert!(
                default_dir(name).join("package-lock.json").is_file(),
                "{name}"
            );
        }
    }
}
