//! Many small frames in one NATS message: what the relay and the bus share.
//!
//! NATS costs per message, on both nodes and in the server, so a writer
//! packs what queued meanwhile for one peer into one message, as
//! `[length: u32 LE][frame]…`. A peer's batch may open with a frame of its
//! own (the bus's sender header), written once per message.

use bytes::{BufMut, Bytes, BytesMut};

/// The most bytes of frames a writer packs into one NATS message (well
/// under NATS's default `max_payload` of 1 MiB).
pub const BATCH: usize = 256 * 1024;

/// A batch ended in the middle of a frame (or of its length).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("torn batch: {0}")]
pub struct Torn(pub String);

/// Frames queued for each peer, in the order each peer was first seen: a
/// message per peer, or more when one would pass [`BATCH`].
pub struct Batches<K> {
    /// Each message: its peer, its bytes, and whether it holds a frame yet
    /// (beyond what opened it).
    peers: Vec<(K, BytesMut, bool)>,
    size: usize,
}

impl<K> Default for Batches<K> {
    fn default() -> Self {
        Batches {
            peers: Vec::new(),
            size: 0,
        }
    }
}

impl<K: PartialEq> Batches<K> {
    /// Add a frame for `to`.
    pub fn add(&mut self, to: K, frame: &[u8]) {
        self.add_opened(to, frame, |_| {});
    }

    /// Add a frame for `to`; a batch new to `to` first gets the frames
    /// `open` writes (with [`put`]). A frame that would take `to`'s latest
    /// batch past [`BATCH`] starts another (a frame longer than that goes
    /// alone).
    pub fn add_opened(&mut self, to: K, frame: &[u8], open: impl FnOnce(&mut BytesMut)) {
        let latest = self.peers.iter().rposition(|(p, _, _)| *p == to);
        let at = match latest {
            Some(at) if !self.peers[at].2 || self.peers[at].1.len() + 4 + frame.len() <= BATCH => {
                at
            }
            _ => {
                let mut batch = BytesMut::new();
                open(&mut batch);
                self.size += batch.len();
                self.peers.push((to, batch, false));
                self.peers.len() - 1
            }
        };
        let (_, batch, holds) = &mut self.peers[at];
        put(batch, frame);
        *holds = true;
        self.size += 4 + frame.len();
    }

    /// Bytes queued over all peers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The messages, each peer's in the order its frames were added.
    pub fn take(&mut self) -> Vec<(K, Bytes)> {
        self.size = 0;
        self.peers
            .drain(..)
            .map(|(to, batch, _)| (to, batch.freeze()))
            .collect()
    }
}

/// Write one frame, length first, into a batch.
pub fn put(batch: &mut BytesMut, frame: &[u8]) {
    batch.put_u32_le(frame.len() as u32);
    batch.extend_from_slice(frame);
}

/// One NATS message carrying `frames`, as a writer packs them.
pub fn batch<'a>(frames: impl IntoIterator<Item = &'a Bytes>) -> Bytes {
    let mut batches = Batches::default();
    for frame in frames {
        batches.add((), frame);
    }
    batches
        .take()
        .pop()
        .map(|(_, batch)| batch)
        .unwrap_or_default()
}

/// The frames of one NATS message, in order; a torn length or frame ends it
/// with an error.
pub fn unbatch(mut message: Bytes) -> impl Iterator<Item = Result<Bytes, Torn>> {
    std::iter::from_fn(move || {
        if message.is_empty() {
            return None;
        }
        if message.len() < 4 {
            message.clear();
            return Some(Err(Torn("a torn length".into())));
        }
        let len = u32::from_le_bytes([message[0], message[1], message[2], message[3]]) as usize;
        let left = message.len() - 4;
        if left < len {
            message.clear();
            return Some(Err(Torn(format!("a frame of {len} bytes in {left} left"))));
        }
        let _ = message.split_to(4);
        Some(Ok(message.split_to(len)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(message: &Bytes) -> Vec<Bytes> {
        unbatch(message.clone())
            .collect::<Result<_, _>>()
            .expect("unbatches")
    }

    #[test]
    fn frames_for_one_peer_travel_in_one_message_in_order() {
        let frames: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; i as usize])).collect();
        let mut batches = Batches::default();
        for (i, f) in frames.iter().enumerate() {
            batches.add(if i == 2 { 9 } else { 7 }, f);
        }
        assert_eq!(
            batches.size(),
            frames.iter().map(|f| 4 + f.len()).sum::<usize>()
        );
        let taken = batches.take();
        assert_eq!(taken.len(), 2, "one message per peer");
        assert_eq!(taken[0].0, 7);
        assert_eq!(
            frames_of(&taken[0].1),
            vec![
                frames[0].clone(),
                frames[1].clone(),
                frames[3].clone(),
                frames[4].clone()
            ]
        );
        assert_eq!(frames_of(&taken[1].1), vec![frames[2].clone()]);
        assert_eq!(batches.size(), 0);
        assert!(batches.take().is_empty());
    }

    #[test]
    fn a_peer_s_batch_opens_once_with_its_own_frame() {
        let mut batches = Batches::default();
        let open = |b: &mut BytesMut| put(b, b"header");
        batches.add_opened("a", b"one", open);
        batches.add_opened("b", b"other", open);
        batches.add_opened("a", b"two", open);
        let taken = batches.take();
        assert_eq!(
            frames_of(&taken[0].1),
            vec![
                Bytes::from_static(b"header"),
                Bytes::from_static(b"one"),
                Bytes::from_static(b"two")
            ]
        );
        assert_eq!(
            frames_of(&taken[1].1),
            vec![Bytes::from_static(b"header"), Bytes::from_static(b"other")]
        );
    }

    #[test]
    fn a_peer_s_frames_past_a_batch_go_in_more_messages_each_opened_in_order() {
        let mut batches = Batches::default();
        let open = |b: &mut BytesMut| put(b, b"header");
        let big = |i: u8| Bytes::from(vec![i; BATCH / 3]);
        for i in 0..5 {
            batches.add_opened("a", &big(i), open);
        }
        batches.add_opened("b", b"small", open);
        // One longer than a batch goes alone.
        let huge = Bytes::from(vec![9; BATCH * 2]);
        batches.add_opened("a", &huge, open);
        let taken = batches.take();
        let to: Vec<&str> = taken.iter().map(|(to, _)| *to).collect();
        assert_eq!(to, vec!["a", "a", "a", "b", "a"]);
        let header = Bytes::from_static(b"header");
        let frames: Vec<Vec<Bytes>> = taken.iter().map(|(_, m)| frames_of(m)).collect();
        assert_eq!(frames[0], vec![header.clone(), big(0), big(1)]);
        assert_eq!(frames[1], vec![header.clone(), big(2), big(3)]);
        assert_eq!(frames[2], vec![header.clone(), big(4)]);
        assert_eq!(frames[4], vec![header, huge]);
        for (_, message) in &taken[..4] {
            assert!(message.len() <= BATCH, "{}", message.len());
        }
    }

    #[test]
    fn a_torn_batch_yields_what_is_whole_then_an_error() {
        let whole = batch(&[Bytes::from_static(b"first"), Bytes::from_static(b"second")]);
        let torn = whole.slice(..whole.len() - 2);
        let got: Vec<_> = unbatch(torn).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Ok(Bytes::from_static(b"first")));
        assert!(got[1].is_err());
        assert!(matches!(
            unbatch(Bytes::from_static(b"\x01")).next(),
            Some(Err(Torn(_)))
        ));
    }
}
