//! The real binary: embedded defaults print the admin token, and a bad
//! setting stops start-up with a message naming it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .env_remove("SWITCHBOARD_BIND")
        .env_remove("SWITCHBOARD_CONFIG");
    cmd
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
