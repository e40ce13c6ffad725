//! Injected storage faults: the writer's file writes and fsyncs go through
//! here, so a test can make the next N of them fail the way a full or
//! failing disk does, in-process and on any file system. Without a test
//! arming it, this is a few atomic loads per batch.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// A handle shared between a test and the journal's writer (cheap to clone).
/// Arming it makes the next writes or fsyncs of segment data fail.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU32,
    syncs: AtomicU32,
    stalled: AtomicBool,
}

impl Faults {
    /// The next `n` writes of records fail with ENOSPC ("No space left on
    /// device") after writing the first half of their bytes, as a write
    /// that ran out of space midway does.
    pub fn fail_writes(&self, n: u32) {
        self.0.writes.store(n, Ordering::SeqCst);
    }

    /// The next `n` fsyncs of segment data fail with EIO.
    pub fn fail_syncs(&self, n: u32) {
        self.0.syncs.store(n, Ordering::SeqCst);
    }

    /// While on, every write waits, as on a disk that stopped answering
    /// (a hung network volume): the queue fills and appends are refused.
    pub fn stall(&self, on: bool) {
        self.0.stalled.store(on, Ordering::SeqCst);
    }

    /// Faults still armed (writes, fsyncs).
    pub fn armed(&self) -> (u32, u32) {
        (
            self.0.writes.load(Ordering::SeqCst),
            self.0.syncs.load(Ordering::SeqCst),
        )
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.load(Ordering::Relaxed) > 0
            && counter
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
    }

    /// `write_all`, unless a write fault is armed.
    pub(super) fn write_all(&self, out: &mut impl io::Write, buf: &[u8]) -> io::Result<()> {
        while self.0.stalled.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if Self::take(&self.0.writes) {
            out.write_all(&buf[..buf.len() / 2])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        out.write_all(buf)
    }

    /// `sync_data`, unless an fsync fault is armed.
    pub(super) fn sync_data(&self, file: &std::fs::File) -> io::Result<()> {
        if Self::take(&self.0.syncs) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        file.sync_data()
    }
}
