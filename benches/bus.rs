//! What a message costs when it crosses from one node to another on the
//! bus (`switchboard::cluster::bus`), against the same message over a plain
//! loopback TCP socket measured in the same run: the figure the partitioned
//! form of cluster mode is planned with (`docs/cluster.md`, "The bus").
//!
//! Both sides run in this process (two buses, or the two ends of a socket),
//! on a multi-threaded tokio runtime; nats-server is another process. Each
//! iteration streams `BURST` messages of a desk-bound shape (a
//! conversation id, a number and a 200-byte frame) from one side and waits
//! until the other has decoded them all:
//!
//! - `bus`: `Bus::send` on one node, `Delivery::Message` on the other;
//! - `tcp`: the same messages, bincode-encoded and length-prefixed, written
//!   through a buffered socket and read back: the cheapest way to carry
//!   them, no broker in between.
//!
//! Set `NATS_URL` to use a running nats-server (pin it to its own core with
//! `taskset` and this bench to another, as `docs/cluster.md` shows);
//! otherwise the bench starts `nats-server` (from `$NATS_SERVER`, `PATH` or
//! `/usr/sbin`) on a free port, or says it has none and measures nothing.
//!
//! Run with `cargo bench --bench bus`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use switchboard::cluster::bus::OUTBOX;
use switchboard::cluster::relay::Timing;
use switchboard::cluster::{Bus, BusOptions, ClusterSettings, Delivery};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;

const BURST: u64 = 2_000;

/// A message of the shape a conversation's owner sends an agent's node.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ToDesk {
    conversation: String,
    seq: u64,
    frame: Vec<u8>,
}

fn message(seq: u64) -> ToDesk {
    ToDesk {
        conversation: "c-5f1d2a9b7e3c4d6a8b0c1e2f".into(),
        seq,
        frame: vec![b'x'; 200],
    }
}

/// A nats-server this bench started; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats() -> Option<(String, Option<Server>)> {
    if let Ok(url) = std::env::var("NATS_URL") {
        return Some((url, None));
    }
    let binary = std::env::var_os("NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join("nats-server"))
                    .find(|p| p.is_file())
            })
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))?;
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((format!("nats://127.0.0.1:{port}"), Some(server)))
}

fn options() -> BusOptions {
    BusOptions {
        outbox: OUTBOX,
        deliveries: 4096,
        timing: Timing {
            heartbeat: Duration::from_millis(500),
            silence: Duration::from_secs(5),
        },
    }
}

fn cross_node(c: &mut Criterion) {
    let Some((url, _server)) = nats() else {
        eprintln!("bus bench: no nats-server (set NATS_URL or NATS_SERVER); nothing measured");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // Held to the end: a's deliveries (none come) and b's handle.
    let ((a, _a_rx), (_b, b_rx)) = rt.block_on(async {
        let (a, b) = (
            ClusterSettings::new(url.clone(), "bench-a"),
            ClusterSettings::new(url.clone(), "bench-b"),
        );
        (
            Bus::<ToDesk>::start(&a, options()).await.expect("bus a"),
            Bus::<ToDesk>::start(&b, options()).await.expect("bus b"),
        )
    });
    let mut b_rx = Some(b_rx);

    // The socket pair: a writer task fed by a channel, a reader counting.
    let (tcp_tx, tcp_done) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.set_nodelay(true).expect("nodelay");
        let (tx, mut rx) = mpsc::unbounded_channel::<ToDesk>();
        tokio::spawn(async move {
            let mut out = BufWriter::new(client);
            while let Some(m) = rx.recv().await {
                let bytes = switchboard::codec::encode(&m).expect("encodes");
                out.write_u32_le(bytes.len() as u32).await.expect("write");
                out.write_all(&bytes).await.expect("write");
                if rx.is_empty() {
                    out.flush().await.expect("flush");
                }
            }
        });
        let (done_tx, done) = mpsc::unbounded_channel::<u64>();
        tokio::spawn(async move {
            let mut input = BufReader::new(server);
            let mut buf = Vec::new();
            while let Ok(len) = input.read_u32_le().await {
                buf.resize(len as usize, 0);
                if input.read_exact(&mut buf).await.is_err() {
                    break;
                }
                let m: ToDesk = switchboard::codec::decode(&buf).expect("decodes");
                let _ = done_tx.send(m.seq);
            }
        });
        (tx, done)
    });
    let mut tcp_done = Some(tcp_done);

    let mut group = c.benchmark_group("cross_node");
    group.throughput(Throughput::Elements(BURST));
    group.bench_function("bus", |bench| {
        bench.iter_custom(|iters| {
            let mut rx = b_rx.take().expect("receiver");
            let took = rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    for seq in 0..BURST {
                        a.send("bench-b", &message(seq)).expect("sends");
                    }
                    let mut got = 0;
                    while got < BURST {
                        match rx.recv().await.expect("bus runs") {
                            Delivery::Message { .. } => got += 1,
                            other => panic!("bus bench: {other:?}"),
                        }
                    }
                }
                started.elapsed()
            });
            b_rx = Some(rx);
            took
        })
    });
    group.bench_function("tcp", |bench| {
        bench.iter_custom(|iters| {
            let mut done = tcp_done.take().expect("receiver");
            let took = rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    for seq in 0..BURST {
                        tcp_tx.send(message(seq)).expect("sends");
                    }
                    for _ in 0..BURST {
                        done.recv().await.expect("socket runs");
                    }
                }
                started.elapsed()
            });
            tcp_done = Some(done);
            took
        })
    });
    group.finish();
}

criterion_group!(benches, cross_node);
criterion_main!(benches);
