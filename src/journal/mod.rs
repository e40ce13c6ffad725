//! STAND-IN (replaced by the storage layer at merge): a naive synchronous
//! journal with the storage layer's API, so records and recovery can be
//! written and tested against it.

pub mod record;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub type Lsn = u64;

#[derive(Debug, Clone)]
pub enum Fsync {
    Always,
    Batch { max_delay: Duration },
    Never,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub segment_bytes: u64,
    pub queue_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("unavailable: {reason}")]
    Unavailable { reason: String },
}

pub struct Recovered {
    pub snapshot: Option<(Lsn, Vec<u8>)>,
    pub records: Vec<(Lsn, Vec<u8>)>,
}

struct Inner {
    file: Mutex<(File, Lsn)>,
}

#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl Journal {
    pub fn open(cfg: JournalConfig) -> Result<(Journal, Recovered), JournalError> {
        std::fs::create_dir_all(&cfg.dir)?;
        let path = cfg.dir.join("naive.log");
        let mut records = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            let mut all = Vec::new();
            f.read_to_end(&mut all)?;
            let mut at = 0usize;
            while at + 4 <= all.len() {
                let len =
                    u32::from_le_bytes(all[at..at + 4].try_into().unwrap_or_default()) as usize;
                if at + 4 + len > all.len() {
                    break;
                }
                records.push((records.len() as u64 + 1, all[at + 4..at + 4 + len].to_vec()));
                at += 4 + len;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let n = records.len() as u64;
        Ok((
            Journal {
                inner: Arc::new(Inner {
                    file: Mutex::new((file, n)),
                }),
            },
            Recovered {
                snapshot: None,
                records,
            },
        ))
    }

    pub fn append(&self, payload: &[u8]) -> Result<Lsn, JournalError> {
        let mut g = self.inner.file.lock();
        let mut buf = (payload.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(payload);
        g.0.write_all(&buf)?;
        g.1 += 1;
        Ok(g.1)
    }

    pub fn appended(&self) -> Lsn {
        self.inner.file.lock().1
    }

    pub fn durable(&self) -> Lsn {
        self.appended()
    }

    pub fn health(&self) -> Result<(), JournalError> {
        Ok(())
    }

    pub fn close(&self, _timeout: Duration) -> Result<(), JournalError> {
        self.inner.file.lock().0.sync_all()?;
        Ok(())
    }
}

impl Journal {
    pub async fn wait_durable(&self, _lsn: Lsn) -> Result<(), JournalError> {
        Ok(())
    }
}
