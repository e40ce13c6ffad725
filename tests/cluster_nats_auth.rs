//! A cluster on a NATS that admits only its own: nodes prove themselves with
//! the credentials in their `--cluster` URL (user and password, or a token)
//! or with a client certificate over TLS. Real processes on a real
//! nats-server: the nodes that may, run (the active node, and a standby
//! relaying to it through its own NATS connections); a node that may not
//! stops at start, saying why, and never shows the credentials it was given.
//! And a NATS user allowed only the subjects `docs/cluster.md` lists runs a
//! whole cluster without a permission violation.
//!
//! The tests run one at a time (each starts its own nats-server and nodes).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{TestCluster, ADMIN};
use common::nats::NatsServer;
use common::process::Stream;
use common::*;

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Node `i` as a standby, once its relay knows the active node, and a call
/// through it (which the relay's own NATS connections carry).
async fn relays(cluster: &mut TestCluster, i: usize) {
    let h = Harness::external(&cluster.standby_url(i), ADMIN);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if h.get("/healthz", None).await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "node-{i} never relaying");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = h.get("/v1/agents", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Node `i` exits at start with an error; what it printed on stderr.
fn refused(cluster: &mut TestCluster, i: usize) -> String {
    let code = cluster.process(i).wait_exit(Duration::from_secs(20));
    assert_ne!(code, Some(0), "node-{i} must not start");
    let broker = cluster.nodes[i].process.take().expect("started");
    broker.stop(Stream::Err).join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_the_urls_credentials_run_and_others_are_refused_without_leaking_them() {
    let _serial = SERIAL.lock().await;
    // A password with characters a URL must percent-encode.
    let password = "s3cret@pass:w/rd";
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ user: \"switchboard\", password: \"{password}\" }}\n"
    ));
    let plain = nats.url();
    let with = |userinfo: &str| plain.replacen("nats://", &format!("nats://{userinfo}@"), 1);
    let mut cluster = TestCluster::new_on(4, nats);

    cluster.cluster_url = Some(with("switchboard:s3cret%40pass%3Aw%2Frd"));
    cluster.start_node(0);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    let r = active.h.get("/v1/cluster", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    cluster.start_node(1);
    relays(&mut cluster, 1).await;

    // No credentials: refused by NATS, and the node says so.
    cluster.cluster_url = Some(plain.clone());
    cluster.start_node(2);
    let said = refused(&mut cluster, 2);
    assert!(
        said.to_lowercase().contains("authorization"),
        "names the cause: {said}"
    );
    // The wrong password: refused, and shown nowhere.
    cluster.cluster_url = Some(with("switchboard:not-the-password-9f2c"));
    cluster.start_node(3);
    let said = refused(&mut cluster, 3);
    assert!(
        said.contains("connect to NATS at nats://***@127.0.0.1:"),
        "{said}"
    );
    assert!(!said.contains("not-the-password-9f2c"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_admits_a_node() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start_with_config("authorization { token: \"t0ken-for-nodes\" }\n");
    let url = nats.url().replacen("nats://", "nats://t0ken-for-nodes@", 1);
    let mut cluster = TestCluster::new_on(2, nats);
    cluster.cluster_url = Some(url);
    cluster.start_node(0);
    cluster.wait_active(&[], Duration::from_secs(20));
    cluster.start_node(1);
    relays(&mut cluster, 1).await;
}

/// A CA, the server's certificate for 127.0.0.1 and a client certificate,
/// as PEM files in `dir`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "switchboard test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let leaf = |names: Vec<String>, file: &str| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("signed");
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{file}-key.pem")), key.serialize_pem()).expect("write");
    };
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    leaf(vec!["127.0.0.1".into(), "localhost".into()], "server");
    leaf(vec!["node".into()], "node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_nodes_with_a_client_certificate_run_and_others_are_refused() {
    let _serial = SERIAL.lock().await;
    let certs = tempfile::tempdir().expect("temp dir");
    certificates(certs.path());
    let file = |name: &str| certs.path().join(name).display().to_string();
    let nats = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        file("server.pem"),
        file("server-key.pem"),
        file("ca.pem"),
    ));
    let mut cluster = TestCluster::new_on(3, nats);
    cluster.cluster_url = Some(cluster.nats.url().replacen("nats://", "tls://", 1));
    let (ca, cert, key) = (file("ca.pem"), file("node.pem"), file("node-key.pem"));
    let with_certificate = [
        ("SWITCHBOARD_CLUSTER_TLS_CA", ca.as_str()),
        ("SWITCHBOARD_CLUSTER_TLS_CERT", cert.as_str()),
        ("SWITCHBOARD_CLUSTER_TLS_KEY", key.as_str()),
    ];
    cluster.start_node_with(0, &with_certificate);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    let r = active.h.get("/v1/cluster", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    cluster.start_node_with(1, &with_certificate);
    relays(&mut cluster, 1).await;

    // Trusting the server, but with no certificate of its own: refused.
    cluster.start_node_with(2, &[("SWITCHBOARD_CLUSTER_TLS_CA", ca.as_str())]);
    let said = refused(&mut cluster, 2);
    assert!(
        said.contains("connect to NATS at tls://127.0.0.1:"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_file_that_cannot_be_read_stops_the_node_naming_the_setting() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(1);
    cluster.start_node_with(
        0,
        &[("SWITCHBOARD_CLUSTER_TLS_CA", "/nonexistent/nats-ca.pem")],
    );
    let said = refused(&mut cluster, 0);
    assert!(
        said.contains("cluster_tls_ca: /nonexistent/nats-ca.pem"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_its_nkey_runs_and_one_with_another_is_refused() {
    let _serial = SERIAL.lock().await;
    let node = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ users: [ {{ nkey: \"{}\" }} ] }}\n",
        node.public_key()
    ));
    let seeds = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, pair: &nkeys::KeyPair| {
        let path = seeds.path().join(name);
        std::fs::write(&path, format!("{}\n", pair.seed().expect("a seed"))).expect("write");
        path.display().to_string()
    };
    let (ours, theirs) = (write("node.nk", &node), write("stranger.nk", &stranger));
    let mut cluster = TestCluster::new_on(3, nats);
    cluster.start_node_with(0, &[("SWITCHBOARD_CLUSTER_NKEY", ours.as_str())]);
    cluster.wait_active(&[], Duration::from_secs(20));
    cluster.start_node_with(1, &[("SWITCHBOARD_CLUSTER_NKEY", ours.as_str())]);
    relays(&mut cluster, 1).await;

    cluster.start_node_with(2, &[("SWITCHBOARD_CLUSTER_NKEY", theirs.as_str())]);
    let said = refused(&mut cluster, 2);
    assert!(said.to_lowercase().contains("authorization"), "{said}");
    assert!(!said.contains(&stranger.seed().expect("a seed")), "{said}");
}

/// A JWT of NATS's decentralised authentication: `claims` (with `iss`,
/// `sub` and `iat` added) signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, mut claims: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    claims["iss"] = issuer.public_key().into();
    claims["sub"] = subject.into();
    claims["iat"] = 1_700_000_000u64.into();
    // An id for the claims; the server does not check how it was made.
    claims["jti"] = format!("{:x}", id_of(subject)).into();
    let head = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{head}.{body}");
    let signature = issuer.sign(signed.as_bytes()).expect("signed");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn id_of(subject: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    subject.hash(&mut h);
    h.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_its_credentials_file_runs_on_a_nats_in_operator_mode() {
    use serde_json::json;
    let _serial = SERIAL.lock().await;
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        json!({"name": "test", "nats": {"type": "operator", "version": 2}}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        json!({"name": "switchboard", "nats": {"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        json!({"name": "SYS", "nats": {"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1}, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        json!({"name": "node", "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}}),
    );
    let nats = NatsServer::start_with_config(&format!(
        "operator: \"{operator_jwt}\"\nsystem_account: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{account_jwt}\"\n  {}: \"{system_jwt}\"\n}}\n",
        system.public_key(),
        account.public_key(),
        system.public_key(),
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("node.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().expect("a seed")
        ),
    )
    .expect("write");
    let creds = creds.display().to_string();
    let mut cluster = TestCluster::new_on(3, nats);
    cluster.start_node_with(0, &[("SWITCHBOARD_CLUSTER_CREDENTIALS", creds.as_str())]);
    cluster.wait_active(&[], Duration::from_secs(20));
    cluster.start_node_with(1, &[("SWITCHBOARD_CLUSTER_CREDENTIALS", creds.as_str())]);
    relays(&mut cluster, 1).await;
    // No credentials: refused.
    cluster.start_node(2);
    let said = refused(&mut cluster, 2);
    assert!(said.to_lowercase().contains("authorization"), "{said}");
}

/// The subjects `docs/cluster.md` lists for the nodes' NATS user, as a
/// NATS permission list (default prefix and bucket names).
const NODE_SUBJECTS: &str = r#"[
    "switchboard.>", "$JS.API.>", "_INBOX.>",
    "$KV.switchboard-leases.>", "$KV.switchboard-status.>",
    "$KV.switchboard-nodes.>", "$KV.switchboard-shared.>",
    "$O.switchboard-files.>", "$O.switchboard-snapshots.>"
]"#;

/// A snapshot every 40 records (and at least every second), so the active
/// node uploads snapshots and trims the core subject behind them.
const SNAPSHOT_OFTEN: [(&str, &str); 2] = [
    ("SWITCHBOARD_SNAPSHOT_EVERY_RECORDS", "40"),
    ("SWITCHBOARD_SNAPSHOT_INTERVAL", "1s"),
];

/// How many snapshots `<prefix>-snapshots` holds, read as the unrestricted
/// `test` user.
async fn snapshots_uploaded(nats: &str) -> usize {
    let client =
        async_nats::ConnectOptions::with_user_and_password("test".into(), "test-only-3b8d".into())
            .connect(nats)
            .await
            .expect("connect as test");
    common::cluster::snapshots_in(client).await.len()
}

/// The permission violations nats-server logged.
fn violations(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

/// The NATS user `docs/cluster.md` describes: allowed the listed subjects
/// and nothing else. With it the nodes do all a cluster does (buckets, the
/// stream, files, snapshots and trimming, a standby seeded from a snapshot
/// and following, the relay, a takeover), and nats-server logs no
/// permission violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_allowed_only_the_documented_subjects_do_everything_a_cluster_does() {
    use common::cluster::{assert_active, assert_served, upload, wait_copied, wait_replicated};
    use common::load::{assert_recovered, Load};
    let _serial = SERIAL.lock().await;
    let logs = tempfile::tempdir().expect("temp dir");
    let log = logs.path().join("nats.log");
    let nats = NatsServer::start_with_config(&format!(
        "log_file: \"{}\"\n\
         authorization {{\n  users: [\n    \
           {{ user: \"switchboard\", password: \"n0des-only-7c1e\", permissions: {{ \
              publish: {NODE_SUBJECTS}, subscribe: {NODE_SUBJECTS} }} }}\n    \
           {{ user: \"test\", password: \"test-only-3b8d\" }}\n  ]\n}}\n",
        log.display()
    ));
    let plain = nats.url();
    let mut cluster = TestCluster::new_on(2, nats);
    cluster.cluster_url = Some(plain.replacen("nats://", "nats://switchboard:n0des-only-7c1e@", 1));

    // The active node: its buckets, stream, lease and status; a file in the
    // files store; records replicated, snapshots uploaded and the core
    // subject trimmed behind them.
    cluster.start_node_with(0, &SNAPSHOT_OFTEN);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    let owner = active.h.create_agent("owner", 1, &[]).await;
    let (file, bytes) = upload(&active.h, &owner.token).await;
    let load = Load::start(&active.h, 3, 4, 10, 12).await;
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    assert_eq!(outcome.total(), 10 * 12, "every message acknowledged");
    wait_replicated(&active.h).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshots_uploaded(&plain).await < 2 {
        assert!(
            Instant::now() < deadline,
            "no snapshots uploaded\n{}",
            cluster.last_lines(0, 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A standby: it seeds from a snapshot, follows the journal, and relays
    // a client's call through its own connections.
    cluster.start_node_with(1, &SNAPSHOT_OFTEN);
    cluster
        .process(1)
        .wait_for(Stream::Err, "the standby seeded from a snapshot", |l| {
            l.contains("starts from the active node's snapshot")
        });
    relays(&mut cluster, 1).await;
    let durable = wait_replicated(&active.h).await;
    wait_copied(&active.h, "node-1", durable).await;

    // The active node dies: the standby claims the subject, takes the lease
    // and serves everything, the file included.
    cluster.process(0).signal(libc::SIGKILL);
    cluster.process(0).wait_exit(Duration::from_secs(5));
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    assert_active(&new.h, "node-1").await;
    assert_recovered(&new.h, &outcome, &agents, 4, 2).await;
    assert_served(&new.h, &owner.token, &file, &bytes).await;

    // Not one subject outside the list was needed.
    let seen = violations(&log);
    assert!(seen.is_empty(), "permission violations: {seen:#?}");

    // And the check can see one: a publish outside the list is logged.
    let node_user = async_nats::ConnectOptions::with_user_and_password(
        "switchboard".into(),
        "n0des-only-7c1e".into(),
    )
    .connect(plain.as_str())
    .await
    .expect("connect as the nodes' user");
    node_user
        .publish("elsewhere.test", "x".into())
        .await
        .expect("publish");
    node_user.flush().await.expect("flush");
    let deadline = Instant::now() + Duration::from_secs(10);
    while violations(&log).is_empty() {
        assert!(Instant::now() < deadline, "the violation was not logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
