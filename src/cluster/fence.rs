//! Fenced appends to a partition's events (or to the core's journal
//! records), and reading them back.
//!
//! Each partition's events go to the events stream on the subject
//! `<prefix>.p.<n>`; the active node's journal records go to `<prefix>.core`
//! ([`EventLog::core_writer`], see `cluster::replicate`). The owner of
//! either writes through a [`FencedWriter`], which
//! sends every event with `Nats-Expected-Last-Subject-Sequence` set to the
//! last sequence it saw on that subject (read when the writer opens, then
//! each of its own acknowledged writes). The server stores the event only if
//! that is still the subject's last sequence; so once a new owner has
//! written, a stale owner's write is refused ([`FenceError::Fenced`]), even
//! if the stale owner has not yet noticed that its lease is gone. The lease
//! says who should write; the fence makes sure nobody else does.
//!
//! That alone would let a stale owner write for as long as the new owner has
//! not written anything, so a new owner's writer first writes a **claim**
//! (an empty marker naming it, at the last sequence it read): from then on
//! only the new owner's writes are accepted. See [`EventLog::writer`] for
//! the order a new owner follows (claim, then rebuild, then serve).
//!
//! Every write also carries a `Nats-Msg-Id` made of the node, the partition,
//! the expected sequence and a checksum of the bytes. Retrying an append
//! whose answer was lost (a NATS restart) is then safe: if the first try was
//! stored, the retry is answered with its sequence instead of storing it
//! twice — by the server as a duplicate id (2.9), or, where the server
//! refuses it on the expected sequence first (2.10 and later), by the writer
//! finding its own id right after the sequence it expected.
//!
//! A new owner rebuilds a partition's state with [`EventLog::read`], from the
//! first sequence it has not applied.

use async_nats::header::{
    HeaderMap, HeaderValue, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID,
};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use serde::Serialize;

use super::lease::Partition;
use super::ClusterSettings;
use crate::codec::{self, CodecError};

/// The header that marks a claim: a new owner's first write, naming it.
pub const CLAIM_HEADER: &str = "Switchboard-Claim";
/// On `<prefix>.core`: the first journal record's Lsn in the message (decimal).
pub const LSN_HEADER: &str = "Switchboard-Lsn";
/// On `<prefix>.core`: the id of the node that wrote the message.
pub const NODE_HEADER: &str = "Switchboard-Node";

/// What a fenced writer writes to: one partition's events, or the core's
/// journal records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Log {
    Partition(Partition),
    Core,
}

impl std::fmt::Display for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Log::Partition(p) => p.fmt(f),
            Log::Core => f.write_str("core"),
        }
    }
}

/// So a partition's errors still compare with the partition.
impl PartialEq<Partition> for Log {
    fn eq(&self, p: &Partition) -> bool {
        *self == Log::Partition(*p)
    }
}

/// How often opening a writer reads and claims before giving up: each retry
/// means another writer got a write in between, which a stale owner can do a
/// few times at most before its keeper notices.
const CLAIM_ATTEMPTS: usize = 8;

/// An append or a read failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Another writer has written to the log since this writer's last
    /// write: this node is not (or no longer) its owner and must drop it.
    #[error("{partition}: fenced off (expected last sequence {expected}); another node owns it")]
    Fenced { partition: Log, expected: u64 },
    /// The writer was fenced before; it refuses every later append.
    #[error("{0}: this writer was fenced off")]
    Closed(Log),
    /// Other writers kept writing while this one tried to claim.
    #[error("{0}: could not claim it, other writers keep writing")]
    Contended(Log),
    /// No answer, or an error that says nothing about the fence (NATS
    /// away): the writer's position is unchanged, the same append may be
    /// retried.
    #[error("{partition}: append: {source}")]
    Append {
        partition: Log,
        #[source]
        source: async_nats::Error,
    },
    #[error("{partition}: read: {source}")]
    Read {
        partition: Log,
        #[source]
        source: async_nats::Error,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// One stored event of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its sequence in the events stream (increasing within a partition,
    /// with gaps: the stream is shared by all partitions).
    pub sequence: u64,
    pub payload: Bytes,
}

impl StoredEvent {
    /// Decode the payload with the journal's codec.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, CodecError> {
        codec::decode(&self.payload)
    }
}

/// The partitions' events: writers for owners, reading for anyone.
#[derive(Clone)]
pub struct EventLog {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    settings: ClusterSettings,
}

/// Called with the partition when a writer finds itself fenced off.
pub type OnFenced = Box<dyn Fn(Partition) + Send + Sync>;

impl EventLog {
    pub(super) fn new(
        jetstream: jetstream::Context,
        stream: stream::Stream,
        settings: ClusterSettings,
    ) -> EventLog {
        EventLog {
            jetstream,
            stream,
            settings,
        }
    }

    /// A writer for `p`, which first **claims** the partition: it reads the
    /// subject's last sequence and writes a claim marker (no payload, the
    /// [`CLAIM_HEADER`] naming this node) expecting that sequence. From then
    /// on every earlier owner's write is refused, whether or not this node
    /// has written an event yet. A write by an earlier owner that slips in
    /// between the read and the claim is simply in the log before the claim
    /// (the claim is retried after it), so a new owner rebuilds the
    /// partition with [`EventLog::read`] *after* opening its writer, up to
    /// [`PartitionWriter::last_sequence`], and nothing an earlier owner had
    /// acknowledged is missed.
    ///
    /// Only the lease holder should open one (see
    /// [`super::LeaseKeeper::writer`], which also drops the lease when the
    /// writer is fenced); `on_fenced` is told when a write is refused.
    pub async fn writer(
        &self,
        p: Partition,
        on_fenced: Option<OnFenced>,
    ) -> Result<PartitionWriter, FenceError> {
        self.open_writer(Log::Partition(p), on_fenced).await
    }

    /// The writer of the core's journal records on `<prefix>.core`, claimed
    /// like a partition's ([`EventLog::writer`]): only the holder of the
    /// `core` lease should open one, and from then on an earlier active
    /// node's writes are refused. It sends the records with
    /// [`FencedWriter::append_records`].
    pub async fn core_writer(&self) -> Result<FencedWriter, FenceError> {
        self.open_writer(Log::Core, None).await
    }

    async fn open_writer(
        &self,
        log: Log,
        on_fenced: Option<OnFenced>,
    ) -> Result<FencedWriter, FenceError> {
        let subject = match log {
            Log::Partition(p) => self.settings.partition_subject(p),
            Log::Core => self.settings.core_subject(),
        };
        // An append's acknowledgement is awaited for one renewal interval at
        // most, like every call to NATS here: one sent just as the server
        // went down is never answered, and the client's default (5 s) would
        // hold every acknowledgement that long after a blip of milliseconds.
        // The retry carries the same message id, so it is stored once.
        let mut jetstream = self.jetstream.clone();
        jetstream.set_timeout(self.settings.renew_every());
        let mut writer = FencedWriter {
            jetstream,
            stream: self.stream.clone(),
            subject,
            log,
            node_id: self.settings.node_id.clone(),
            last: 0,
            fenced: false,
            on_fenced,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            writer.last = match self
                .stream
                .get_last_raw_message_by_subject(&writer.subject)
                .await
            {
                Ok(m) => m.sequence,
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => 0,
                Err(e) => {
                    return Err(FenceError::Read {
                        partition: log,
                        source: e.into(),
                    })
                }
            };
            match writer.send(Bytes::new(), Kind::Claim).await {
                Ok(sequence) => {
                    writer.last = sequence;
                    return Ok(writer);
                }
                Err(FenceError::Fenced { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(FenceError::Contended(log))
    }

    /// Up to `max` of `p`'s events with a sequence of `from` or more, in
    /// order (claim markers left out); fewer means the end was reached. Read one by one with direct
    /// gets: no consumer is created, so any node may read at any time.
    pub async fn read(
        &self,
        p: Partition,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, FenceError> {
        let subject = self.settings.partition_subject(p);
        let mut out = Vec::new();
        let mut next = from.max(1);
        while out.len() < max {
            match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(next))
                .await
            {
                Ok(m) if m.headers.get(CLAIM_HEADER).is_some() => next = m.sequence + 1,
                Ok(m) => {
                    next = m.sequence + 1;
                    out.push(StoredEvent {
                        sequence: m.sequence,
                        payload: m.payload,
                    });
                }
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
                Err(e) => {
                    return Err(FenceError::Read {
                        partition: Log::Partition(p),
                        source: e.into(),
                    })
                }
            }
        }
        Ok(out)
    }
}

/// The owner's writer for one partition, or for the core's records. Not
/// shared: one owner, one writer.
pub struct FencedWriter {
    jetstream: jetstream::Context,
    /// To look for an earlier try of a refused write.
    stream: stream::Stream,
    subject: String,
    log: Log,
    node_id: String,
    last: u64,
    fenced: bool,
    on_fenced: Option<OnFenced>,
}

/// A partition's writer (the name it had before the core got one too).
pub type PartitionWriter = FencedWriter;

/// What [`FencedWriter::send`] writes.
#[derive(Clone, Copy)]
enum Kind {
    Claim,
    Event,
    /// Journal records from this Lsn on (`<prefix>.core`).
    Records(u64),
}

impl FencedWriter {
    /// What this writer writes to.
    pub fn log(&self) -> Log {
        self.log
    }

    /// The subject it writes on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The node id it writes as.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The NATS client it writes with (for the server's `max_payload`).
    pub fn client(&self) -> async_nats::Client {
        self.jetstream.client()
    }

    /// The sequence of the partition's last event as this writer knows it.
    pub fn last_sequence(&self) -> u64 {
        self.last
    }

    /// Encode `event` with the journal's codec and append it.
    pub async fn append_event<T: Serialize>(&mut self, event: &T) -> Result<u64, FenceError> {
        let bytes = codec::encode(event)?;
        self.append(Bytes::from(bytes)).await
    }

    /// Append `payload`, fenced: stored only if nobody else wrote to the
    /// partition since this writer's last write. Returns its sequence. After
    /// another error (no answer) the writer's position is unchanged, so
    /// calling again with the same bytes is safe (deduplicated by id).
    pub async fn append(&mut self, payload: Bytes) -> Result<u64, FenceError> {
        self.append_kind(payload, Kind::Event).await
    }

    /// Append journal records (`<prefix>.core`): `payload` holds records
    /// framed like the journal's segments, the first of them with Lsn
    /// `first`; the message carries the headers [`LSN_HEADER`] (`first`)
    /// and [`NODE_HEADER`] (this node). Fenced and safe to retry with the
    /// same arguments, like [`FencedWriter::append`].
    pub async fn append_records(&mut self, first: u64, payload: Bytes) -> Result<u64, FenceError> {
        self.append_kind(payload, Kind::Records(first)).await
    }

    async fn append_kind(&mut self, payload: Bytes, kind: Kind) -> Result<u64, FenceError> {
        if self.fenced {
            return Err(FenceError::Closed(self.log));
        }
        match self.send(payload, kind).await {
            Ok(sequence) => {
                self.last = sequence;
                Ok(sequence)
            }
            Err(e @ FenceError::Fenced { .. }) => {
                self.fenced = true;
                if let (Some(tell), Log::Partition(p)) = (&self.on_fenced, self.log) {
                    tell(p);
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The headers of a message of `kind` with `payload`, sent at the
    /// expected sequence `expected`, and its message id.
    fn headers(&self, expected: u64, payload: &[u8], kind: Kind) -> (HeaderMap, String) {
        let mut headers = HeaderMap::new();
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            HeaderValue::from(expected),
        );
        let id = self.id_at(expected, payload, matches!(kind, Kind::Claim));
        headers.insert(NATS_MESSAGE_ID, id.as_str());
        match kind {
            Kind::Claim => headers.insert(CLAIM_HEADER, self.node_id.as_str()),
            Kind::Event => {}
            Kind::Records(first) => {
                headers.insert(LSN_HEADER, HeaderValue::from(first));
                headers.insert(NODE_HEADER, self.node_id.as_str());
            }
        }
        (headers, id)
    }

    /// The most bytes the headers of a records message from this writer
    /// take on the wire (every number at its longest): what a message's
    /// payload must leave of the server's `max_payload`.
    pub fn records_header_room(&self) -> usize {
        let (headers, _) = self.headers(u64::MAX, b"", Kind::Records(u64::MAX));
        // "NATS/1.0\r\n", each "name: value\r\n", then "\r\n".
        let mut len = "NATS/1.0\r\n\r\n".len();
        for (name, values) in headers.iter() {
            for value in values {
                len += AsRef::<str>::as_ref(name).len() + 2 + value.as_str().len() + 2;
            }
        }
        len
    }

    /// Publish at the expected sequence `self.last`: an event, journal
    /// records, or the claim marker.
    async fn send(&self, payload: Bytes, kind: Kind) -> Result<u64, FenceError> {
        let expected = self.last;
        let (headers, id) = self.headers(expected, &payload, kind);
        let partition = self.log;
        let append_err = |source: async_nats::Error| FenceError::Append { partition, source };
        let ack = self
            .jetstream
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
            .map_err(|e| append_err(e.into()))?
            .await;
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Refused: either another writer moved the partition on, or
                // this is a retry whose first try was stored (its answer
                // lost). Older servers (2.9) answer such a retry as a
                // duplicate of the id; newer ones (2.10 and later) check the
                // expected sequence first. So look at what follows the
                // expected sequence: this very write, by its id, is stored.
                match self
                    .stream
                    .direct_get_next_for_subject(self.subject.as_str(), Some(expected + 1))
                    .await
                {
                    Ok(m)
                        if m.headers.get(NATS_MESSAGE_ID).map(|v| v.as_str())
                            == Some(id.as_str()) =>
                    {
                        Ok(m.sequence)
                    }
                    // The lookup itself failed (NATS away again): not known
                    // to be fenced, so retried like any unanswered append.
                    Err(e) if !matches!(e.kind(), DirectGetErrorKind::NotFound) => {
                        Err(append_err(e.into()))
                    }
                    _ => Err(FenceError::Fenced {
                        partition,
                        expected,
                    }),
                }
            }
            Err(e) => Err(append_err(e.into())),
        }
    }

    /// The `Nats-Msg-Id` of this writer's next append of `payload` (or of
    /// its claim): node, partition, the expected sequence and a checksum of
    /// the bytes, so a retry of the same append carries the same id.
    pub fn message_id(&self, payload: &[u8], claim: bool) -> String {
        self.id_at(self.last, payload, claim)
    }

    fn id_at(&self, expected: u64, payload: &[u8], claim: bool) -> String {
        format!(
            "{}.{}.{}.{}",
            self.node_id,
            match self.log {
                Log::Partition(p) => p.index().to_string(),
                Log::Core => "core".to_owned(),
            },
            expected,
            if claim {
                "claim".to_owned()
            } else {
                format!("{:08x}", crc32c::crc32c(payload))
            }
        )
    }
}
