//! The binary codec for state-change events (the coming journal), kept behind
//! this one module so the format can be swapped without touching the actors.
//!
//! bincode 2 with its serde bridge: events derive `serde::{Serialize,
//! Deserialize}` only, never a bincode-specific trait.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encoding or decoding a journal record failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("decode: {0} trailing bytes")]
    Trailing(usize),
}

/// The largest record the codec reads back. No event comes near it (a
/// message's text and file metadata are bounded far below); a length prefix
/// beyond it, in a torn or corrupt record, is refused before anything is
/// allocated rather than asking the allocator for exabytes.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RECORD>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_RECORD>()
}

/// Encode one event to bytes.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, config())?)
}

/// Decode one event; the whole input must be consumed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Encode a whole state (a snapshot) to bytes: the same format with no
/// size limit.
pub fn encode_unbounded<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?)
}

/// Decode a whole state (a snapshot); the whole input must be consumed. No
/// size limit: only for bytes whose checksum was checked whole first (the
/// journal's snapshot files), never for outside input.
pub fn decode_unbounded<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// For tests of types that cross between nodes: `value` encodes, decodes,
/// and encodes again to the same bytes (so no field is lost or garbled on
/// the way, as a serde attribute made for JSON can do to this format).
#[cfg(test)]
pub(crate) fn assert_crosses<T: Serialize + DeserializeOwned>(value: &T) {
    let name = std::any::type_name::<T>();
    let bytes = encode(value).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back: T = decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = encode(&back).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(again, bytes, "{name} changed on the way");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Ev {
        A { id: String, n: u64 },
        B(Option<Vec<u8>>),
    }

    #[test]
    fn round_trip_and_trailing_bytes() {
        let ev = Ev::A {
            id: "x".into(),
            n: 7,
        };
        let mut bytes = encode(&ev).unwrap();
        assert_eq!(decode::<Ev>(&bytes).unwrap(), ev);
        bytes.push(0);
        assert!(matches!(decode::<Ev>(&bytes), Err(CodecError::Trailing(1))));
        assert_eq!(
            decode::<Ev>(&encode(&Ev::B(None)).unwrap()).unwrap(),
            Ev::B(None)
        );
    }

    /// Found by the `journal_records` fuzz target: a string whose length
    /// prefix said 2^57 bytes made the decoder allocate them (and abort).
    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_allocation() {
        let mut bytes = vec![0x00, 0xfd];
        bytes.extend([0x03; 8]);
        assert!(matches!(decode::<Ev>(&bytes), Err(CodecError::Decode(_))));
        let mut bytes = vec![0x01, 0x01, 0xfd];
        bytes.extend([0x03; 8]);
        assert!(matches!(decode::<Ev>(&bytes), Err(CodecError::Decode(_))));
    }

    #[test]
    fn records_over_the_limit_are_refused_on_reading() {
        let big = encode(&Ev::B(Some(vec![7; MAX_RECORD + 1]))).unwrap();
        assert!(matches!(decode::<Ev>(&big), Err(CodecError::Decode(_))));
        let fits = Ev::B(Some(vec![7; 1024]));
        assert_eq!(decode::<Ev>(&encode(&fits).unwrap()).unwrap(), fits);
    }

    /// A field left out of the JSON when empty, as the wire types do, is
    /// left out here too, and the reader takes the next field's bytes for
    /// it: `assert_crosses` tells.
    #[test]
    #[should_panic(expected = "JsonOnly")]
    fn a_field_written_only_when_set_does_not_cross() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct JsonOnly {
            #[serde(default, skip_serializing_if = "Option::is_none")]
            reference: Option<String>,
            text: String,
        }
        assert_crosses(&JsonOnly {
            reference: None,
            text: "hi".into(),
        });
    }
}
