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

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
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
}
