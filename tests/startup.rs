//! The real binary: embedded defaults print the admin token, and a bad
//! setting stops start-up with a message naming it; what it prints where;
//! agents from the configuration file.
mod common;

use common::process::{binary, Broker, Stream};

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// An admin token the broker accepts (at least 32 characters).
const ADMIN: &str = "admin-secret-0123456789abcdef0123456789";

/// A file in a scratch directory of this test process.
fn scratch_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sb-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// Run to completion (a start-up that must fail); returns (exit code, stderr).
fn fails(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd.output().expect("run");
    assert!(!out.status.success(), "expected a failure: {out:?}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// GET with an optional bearer token: (status, body).
async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[test]
fn a_short_admin_token_stops_startup_saying_how_long_it_must_be() {
    // From a flag, the environment or the file: the same check, the same words.
    let file = scratch_file(
        "short-admin.toml",
        "admin_token = \"only-twenty-chars-xx\"\n",
    );
    let mut runs = [
        binary()
            .args(["--bind", "127.0.0.1:0", "--admin-token", "admin-secret-1"])
            .output(),
        binary()
            .args(["--bind", "127.0.0.1:0"])
            .env("SWITCHBOARD_ADMIN_TOKEN", "0123456789abcdef0123456789abcde")
            .output(),
        binary()
            .args(["--bind", "127.0.0.1:0", "--config"])
            .arg(&file)
            .output(),
    ]
    .map(|out| out.expect("run"));
    for (out, len) in runs.iter_mut().zip([14, 31, 20]) {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "admin_token: must be at least 32 characters (this one has {len})"
            )),
            "{err}"
        );
        assert!(err.contains("leave it unset"), "{err}");
        assert!(out.stdout.is_empty(), "nothing served, nothing printed");
    }
}

#[test]
fn bad_values_stop_startup_naming_the_setting() {
    let out = binary()
        .env("SWITCHBOARD_OFFER_TIMEOUT", "soon")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--offer-timeout"), "{err}");

    let out = binary()
        .args(["--dispositions", "resolved", "--wrapup-disposition", "gone"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrapup_disposition"), "{err}");

    let dir = std::env::temp_dir().join(format!("sb-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "max_upload = \"lots\"\n").expect("write");
    let out = binary().arg("--config").arg(&file).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_upload"), "{err}");
}

#[test]
fn embedded_defaults_print_a_generated_admin_token_that_works() {
    let mut child = binary()
        .args(["--bind", "127.0.0.1:0"])
        .env("RUST_LOG", "switchboard=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let (mut token, mut addr) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while (token.is_none() || addr.is_none()) && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(t) = line.strip_prefix("admin token: ") {
                token = Some(t.trim().to_owned());
            }
            if let Some(i) = line.find("listening on http://") {
                addr = Some(line[i + "listening on http://".len()..].trim().to_owned());
            }
        }
    }
    let (token, addr) = match (token, addr) {
        (Some(t), Some(a)) => (t, a),
        other => {
            let _ = child.kill();
            panic!("no token/address printed: {other:?}");
        }
    };
    assert_eq!(token.len(), 32, "{token}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (ok, bad) = rt.block_on(async {
        let http = reqwest::Client::new();
        let ok = http
            .get(format!("http://{addr}/v1/agents"))
            .bearer_auth(&token)
            .send()
            .await
            .map(|r| r.status().as_u16());
        let bad = http
            .get(format!("http://{addr}/v1/agents"))
            .bearer_auth("not-the-token")
            .send()
            .await
            .map(|r| r.status().as_u16());
        (ok, bad)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ok.ok(), Some(200));
    assert_eq!(bad.ok(), Some(401));
}

#[test]
fn a_missing_disposition_says_which_setting_and_what_to_do() {
    let (code, err) = fails(binary().args(["--dispositions", "resolved,callback"]));
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "dispositions: [\"resolved\",\"callback\"] does not include the wrap-up timeout's \
             disposition \"no_response\" (wrapup_disposition); add it to dispositions or set \
             wrapup_disposition to one of them"
        ),
        "{err}"
    );
    let file = scratch_file(
        "sim-disposition.toml",
        "dispositions = [\"no_response\", \"callback\"]\nsim_agents = 1\n",
    );
    let (code, err) = fails(binary().arg("--config").arg(&file));
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "does not include the simulated agents' disposition \"resolved\" (sim_disposition); \
             add it to dispositions or set sim_disposition to one of them"
        ),
        "{err}"
    );
}

#[test]
fn a_bind_that_is_not_an_address_names_the_setting() {
    let (code, err) = fails(binary().args(["--bind", "19240"]));
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim(),
        "switchboard: invalid configuration: bind: \"19240\" is not an address:port, \
         e.g. 127.0.0.1:8080"
    );
}

#[test]
fn a_port_in_use_names_the_address_and_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let (code, err) = fails(binary().args(["--bind", &addr.to_string()]));
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim(),
        format!("switchboard: cannot listen on {addr} (bind): Address already in use")
    );
}

#[test]
fn help_shows_the_defaults() {
    let out = binary().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let entry = |flag: &str| -> String {
        // A flag's entry: its line and the help under it, up to the next flag.
        let start = help
            .find(&format!("--{flag} <"))
            .unwrap_or_else(|| panic!("--{flag} missing from:\n{help}"));
        let rest = &help[start..];
        let end = rest[2..].find("\n      --").map_or(rest.len(), |i| i + 2);
        rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    for (flag, default) in [
        ("bind", "127.0.0.1:8080"),
        ("offer-timeout", "30s"),
        ("reoffer-cooldown", "30s"),
        ("max-upload", "25MiB"),
        ("max-notes", "4000"),
        ("log-format", "text"),
        ("admin-token", "generated, printed at start"),
    ] {
        let entry = entry(flag);
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "--{flag}: {entry}"
        );
    }
}

/// Start with logs on a pipe and return what reached stderr.
fn logs_on_a_pipe(format: &[&str]) -> Vec<String> {
    let mut broker = Broker::start(
        binary()
            .args(["--bind", "127.0.0.1:0", "--sim-agents", "2"])
            .args(format)
            .env("RUST_LOG", "switchboard=info"),
    );
    broker.wait_for(Stream::Err, "the simulated agents' log line", |l| {
        l.contains("simulated agents started")
    });
    broker.wait_for(Stream::Err, "the listening log line", |l| {
        l.contains("listening on")
    });
    broker.stop(Stream::Err)
}

#[test]
fn logs_on_a_pipe_have_no_colour_codes() {
    let logs = logs_on_a_pipe(&[]);
    assert!(logs.len() >= 2, "{logs:?}");
    for line in &logs {
        assert!(!line.contains("\x1b["), "escape codes in {line:?}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let logs = logs_on_a_pipe(&["--log-format", "json"]);
    assert!(logs.len() >= 2, "{logs:?}");
    for line in logs.iter().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        assert!(v["fields"]["message"].is_string(), "{v}");
    }
}

#[test]
fn start_prints_each_url_with_the_real_port_and_the_channels_on_stdout() {
    let mut broker = Broker::start(binary().args(["--bind", "127.0.0.1:0"]));
    let token = broker.stdout_value("admin token");
    let urls: Vec<(&str, String)> = ["desk", "chat", "board", "api", "health"]
        .into_iter()
        .map(|label| (label, broker.stdout_value(label)))
        .collect();
    let base = urls[0].1.trim_end_matches("/desk").to_owned();
    assert!(
        base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"),
        "{urls:?}"
    );
    for ((label, url), path) in urls
        .iter()
        .zip(["/desk", "/chat", "/board", "/v1", "/healthz"])
    {
        assert_eq!(url, &format!("{base}{path}"), "{label}");
    }
    assert_eq!(broker.stdout_value("webchat"), "on");
    assert_eq!(
        broker.stdout_value("sms"),
        "off (set SWITCHBOARD_TWILIO_ACCOUNT_SID, SWITCHBOARD_TWILIO_AUTH_TOKEN and \
         SWITCHBOARD_SMS_FROM)"
    );
    assert!(
        broker
            .stdout_value("whatsapp")
            .starts_with("off (set SWITCHBOARD_WHATSAPP_TOKEN, "),
        "{:?}",
        broker.seen
    );
    assert!(
        broker
            .stdout_value("messenger")
            .starts_with("off (set SWITCHBOARD_MESSENGER_PAGE_TOKEN, "),
        "{:?}",
        broker.seen
    );
    runtime().block_on(async {
        for (label, url) in &urls {
            let url = if *label == "api" {
                format!("{url}/dispositions")
            } else {
                url.clone()
            };
            assert_eq!(get(&url, None).await.0, 200, "{url}");
        }
        assert_eq!(get(&format!("{base}/v1/agents"), Some(&token)).await.0, 200);
    });
    // Logs only on stderr: none of the stdout lines went there.
    let stderr = broker.stop(Stream::Err);
    assert!(
        !stderr
            .iter()
            .any(|l| l.starts_with("desk:") || l.starts_with("admin token:")),
        "{stderr:?}"
    );
}

#[test]
fn a_configured_channel_shows_on_with_its_webhook() {
    let mut broker = Broker::start(
        binary()
            .args(["--bind", "127.0.0.1:0", "--admin-token", ADMIN])
            .env("SWITCHBOARD_TWILIO_ACCOUNT_SID", "AC0000")
            .env("SWITCHBOARD_TWILIO_AUTH_TOKEN", "twilio-secret")
            .env("SWITCHBOARD_SMS_FROM", "+15550001111")
            .env("SWITCHBOARD_PUBLIC_URL", "https://chat.example.com/"),
    );
    assert_eq!(
        broker.stdout_value("sms"),
        "on (webhook https://chat.example.com/v1/channels/sms/inbound)"
    );
    assert!(broker.stdout_value("whatsapp").starts_with("off"));
    // A token that was given is not printed.
    let stdout = broker.stop(Stream::Out);
    assert!(!stdout.iter().any(|l| l.contains(ADMIN)), "{stdout:?}");
}

const TWO_AGENTS: &str = r#"
[[agents]]
id = "alice"
name = "Alice"
capacity = { webchat = 3, sms = 2 }
skills = ["spanish"]
token = "alice-desk-token-0001"

[[agents]]
id = "bob"
capacity = { webchat = 1 }
"#;

#[test]
fn agents_from_the_config_file_exist_and_their_tokens_open_the_desk() {
    let file = scratch_file("agents.toml", TWO_AGENTS);
    let mut broker = Broker::start(
        binary()
            .args(["--bind", "127.0.0.1:0", "--admin-token", ADMIN])
            .arg("--config")
            .arg(&file),
    );
    let base = broker
        .stdout_value("desk")
        .trim_end_matches("/desk")
        .to_owned();
    let bob_token = broker.stdout_value("agent bob token");
    assert_eq!(bob_token.len(), 32, "{bob_token}");
    let ws_base = base.replacen("http://", "ws://", 1);
    runtime().block_on(async {
        let (status, body) = get(&format!("{base}/v1/agents"), Some(ADMIN)).await;
        assert_eq!(status, 200, "{body}");
        let agents: Value = serde_json::from_str(&body).expect("json");
        let agents = agents.as_array().expect("array");
        assert_eq!(agents.len(), 2, "{agents:?}");
        assert_eq!(agents[0]["id"], "alice");
        assert_eq!(agents[0]["name"], "Alice");
        assert_eq!(agents[0]["capacity"]["webchat"], 3);
        assert_eq!(agents[0]["capacity"]["sms"], 2);
        assert_eq!(agents[0]["skills"], serde_json::json!(["spanish"]));
        assert_eq!(agents[1]["id"], "bob");
        assert_eq!(agents[1]["name"], "bob");

        for (id, token) in [
            ("alice", "alice-desk-token-0001"),
            ("bob", bob_token.as_str()),
        ] {
            let url = format!("{ws_base}/v1/agents/{id}/ws?token={token}");
            let mut desk = common::Ws::connect(&url).await;
            let hello = desk.recv_type("hello").await;
            assert_eq!(hello["agent"]["id"], id, "{hello}");
            let (status, _) = get(&format!("{base}/v1/agents/{id}"), Some(token)).await;
            assert_eq!(status, 200, "{id} reads itself with its token");
        }
        let wrong = format!("{ws_base}/v1/agents/alice/ws?token={bob_token}");
        assert_eq!(common::try_connect(&wrong).await.err(), Some(401));
    });
    // A token from the file is not printed; a generated one is.
    let stdout = broker.stop(Stream::Out);
    assert!(
        !stdout
            .iter()
            .any(|l| l.contains("alice-desk-token-0001") || l.starts_with("agent alice")),
        "{stdout:?}"
    );
}

#[test]
fn bad_agents_in_the_config_file_stop_startup_naming_them() {
    let dup = TWO_AGENTS.replace("id = \"bob\"", "id = \"alice\"");
    let file = scratch_file("dup-agents.toml", &dup);
    let (code, err) = fails(binary().arg("--config").arg(&file));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("agents[1].id: \"alice\" is already the id of agents[0]"),
        "{err}"
    );

    let short = TWO_AGENTS.replace("alice-desk-token-0001", "alice-token");
    let file = scratch_file("short-token.toml", &short);
    let (code, err) = fails(binary().arg("--config").arg(&file));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("agents[0].token: must be at least 16 characters (this one has 11)"),
        "{err}"
    );
}

/// `THP_enabled` of a running process (Linux: 0 once the process turned
/// transparent huge pages off for itself).
#[cfg(target_os = "linux")]
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

#[cfg(target_os = "linux")]
#[test]
fn transparent_huge_pages_are_off_unless_asked_for() {
    if thp_enabled(std::process::id()).is_none() {
        eprintln!("this kernel does not show THP_enabled; nothing to check");
        return;
    }
    for (args, expected) in [
        (&["--bind", "127.0.0.1:0"][..], "0"),
        (
            &["--bind", "127.0.0.1:0", "--transparent-huge-pages"][..],
            "1",
        ),
    ] {
        let mut broker = Broker::start(binary().args(args).env("SWITCHBOARD_ADMIN_TOKEN", ADMIN));
        broker.wait_for(Stream::Out, "the listening address", |l| {
            l.contains("http://127.0.0.1:")
        });
        let seen = thp_enabled(broker.child.id());
        let _ = broker.child.kill();
        let _ = broker.child.wait();
        assert_eq!(seen.as_deref(), Some(expected), "{args:?}");
    }
}
