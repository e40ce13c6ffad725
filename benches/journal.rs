//! The journal on a real temp directory: append throughput under each fsync
//! policy with 4 appending threads, and the replay time of 1,000,000
//! records through `Journal::open`; and the cost of `Journal::health`, the
//! check made for every message and changing request, alone and while 3
//! threads append (where a lock would be contended).
//!
//! Two append shapes: `pipelined` (each thread appends its share without
//! waiting, then waits for the last to be durable: the writer's raw rate)
//! and `acked` (each thread waits for every record to be durable before the
//! next, as a client waiting for its ack does: what group commit is for).
//!
//! Run with `cargo bench --bench journal`; `-- --warm-up-time 1
//! --measurement-time 3` for a quick look. The temp directory is on the
//! system's temp file system, so the fsync figures are that disk's.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard::journal::{Fsync, Journal, JournalConfig, JournalError, Lsn};

const THREADS: u64 = 4;
const PAYLOAD: usize = 200;

fn policies() -> [(&'static str, Fsync); 3] {
    [
        (
            "batch_2ms",
            Fsync::Batch {
                max_delay: Duration::from_millis(2),
            },
        ),
        ("always", Fsync::Always),
        ("never", Fsync::Never),
    ]
}

/// Append, retrying while the queue is full (the bench drives it harder
/// than a broker would).
fn append(j: &Journal, payload: &[u8]) -> Lsn {
    loop {
        match j.append(payload) {
            Ok(lsn) => return lsn,
            Err(JournalError::Unavailable { .. }) => std::thread::yield_now(),
            Err(e) => panic!("append: {e}"),
        }
    }
}

/// `THREADS` threads append `per_thread` records each; returns the time
/// until the last is durable.
fn run(j: &Journal, per_thread: u64, acked: bool) -> Duration {
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let j = j.clone();
            std::thread::spawn(move || {
                let payload = [7u8; PAYLOAD];
                let mut last = 0;
                for _ in 0..per_thread {
                    last = append(&j, &payload);
                    if acked {
                        j.wait_durable_blocking(last, Duration::from_secs(60))
                            .expect("durable");
                    }
                }
                last
            })
        })
        .collect();
    let last = threads
        .into_iter()
        .map(|t| t.join().expect("appender"))
        .max()
        .unwrap_or(0);
    j.wait_durable_blocking(last, Duration::from_secs(60))
        .expect("durable");
    started.elapsed()
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal append (4 threads, 200 B)");
    group.sample_size(10);
    for acked in [false, true] {
        for (name, fsync) in policies() {
            let dir = tempfile::tempdir().expect("temp dir");
            let (j, _) = Journal::open(JournalConfig {
                fsync,
                ..JournalConfig::new(dir.path())
            })
            .expect("open");
            let shape = if acked { "acked" } else { "pipelined" };
            // Per iteration: this many records per thread.
            let per_thread: u64 = if acked && fsync == Fsync::Always {
                50
            } else if acked {
                500
            } else {
                10_000
            };
            group.throughput(Throughput::Elements(per_thread * THREADS));
            group.bench_function(BenchmarkId::new(shape, name), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| run(&j, per_thread, acked)).sum())
            });
            j.close(Duration::from_secs(30)).expect("close");
        }
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    const RECORDS: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = JournalConfig {
        fsync: Fsync::Never,
        ..JournalConfig::new(dir.path())
    };
    let (j, _) = Journal::open(cfg.clone()).expect("open");
    let mut payload = vec![0u8; PAYLOAD];
    for i in 0..RECORDS {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        append(&j, &payload);
    }
    j.close(Duration::from_secs(60)).expect("close");

    let mut group = c.benchmark_group("journal replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("open 1,000,000 records of 200 B", |b| {
        b.iter(|| {
            let (j, recovered) = Journal::open(cfg.clone()).expect("open");
            assert_eq!(recovered.records.len() as u64, RECORDS);
            j.close(Duration::from_secs(10)).expect("close");
        })
    });
    group.finish();
}

fn health(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (j, _) = Journal::open(JournalConfig {
        fsync: Fsync::Never,
        ..JournalConfig::new(dir.path())
    })
    .expect("open");
    let mut group = c.benchmark_group("journal health");
    group.bench_function("idle", |b| {
        b.iter(|| std::hint::black_box(j.health()).is_ok())
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appenders: Vec<_> = (0..3)
        .map(|_| {
            let (j, stop) = (j.clone(), stop.clone());
            std::thread::spawn(move || {
                let payload = [7u8; PAYLOAD];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A full queue is refused at once; keep going.
                    let _ = j.append(&payload);
                }
            })
        })
        .collect();
    group.bench_function("while 3 threads append", |b| {
        b.iter(|| std::hint::black_box(j.health()).is_ok())
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in appenders {
        t.join().expect("appender");
    }
    group.finish();
    j.close(Duration::from_secs(30)).expect("close");
}

criterion_group!(benches, appends, replay, health);
criterion_main!(benches);
