//! An optional zstd dictionary for the residue of each packet: small packets
//! give zstd little context of their own, and a dictionary trained on typical
//! payloads supplies it. Both partners must load the same dictionary; its
//! identifier (logged at start by the fast path) lets an operator compare them.

use std::path::Path;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::CodecError;

/// Smallest dictionary accepted: zstd needs some content to be of any use.
pub const MIN_DICTIONARY_BYTES: usize = 256;
/// Largest dictionary accepted (zstd's own tools train 110 KiB by default).
pub const MAX_DICTIONARY_BYTES: usize = 1 << 20;

/// A zstd dictionary shared by the encoders and decoders of one partner.
/// Cheap to clone: the bytes are shared.
#[derive(Clone, PartialEq, Eq)]
pub struct ZstdDictionary {
    bytes: Arc<[u8]>,
    id: u64,
}

impl std::fmt::Debug for ZstdDictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdDictionary")
            .field("bytes", &self.bytes.len())
            .field("id", &format_args!("{:016x}", self.id))
            .finish()
    }
}

impl ZstdDictionary {
    /// A dictionary from its bytes: a trained dictionary (`zstd --train`) or raw
    /// content, between [`MIN_DICTIONARY_BYTES`] and [`MAX_DICTIONARY_BYTES`].
    pub fn new(bytes: Vec<u8>) -> Result<Self, CodecError> {
        if !(MIN_DICTIONARY_BYTES..=MAX_DICTIONARY_BYTES).contains(&bytes.len()) {
            return Err(CodecError::Dictionary(format!(
                "a zstd dictionary must hold {MIN_DICTIONARY_BYTES} to {MAX_DICTIONARY_BYTES} bytes, \
                 this one holds {}; train one with `zstd --train FILES -o DICT`",
                bytes.len()
            )));
        }
        // Check that zstd accepts it for both directions now, not at the first packet.
        zstd::bulk::Compressor::with_dictionary(1, &bytes)
            .and_then(|_| zstd::bulk::Decompressor::with_dictionary(&bytes))
            .map_err(|e| CodecError::Dictionary(format!("zstd refuses the dictionary: {e}")))?;
        let id = xxh3_64(&bytes);
        Ok(Self {
            bytes: bytes.into(),
            id,
        })
    }

    /// Reads a dictionary file.
    pub fn load(path: &Path) -> Result<Self, CodecError> {
        let bytes = std::fs::read(path).map_err(|e| {
            CodecError::Dictionary(format!(
                "cannot read the zstd dictionary {}: {e}",
                path.display()
            ))
        })?;
        Self::new(bytes)
    }

    /// Trains a dictionary of at most `max_bytes` from sample payloads (zstd's
    /// trainer; it wants many samples, ideally thousands).
    pub fn train(samples: &[&[u8]], max_bytes: usize) -> Result<Self, CodecError> {
        let bytes = zstd::dict::from_samples(samples, max_bytes)
            .map_err(|e| CodecError::Dictionary(format!("training the dictionary failed: {e}")))?;
        Self::new(bytes)
    }

    /// The dictionary's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// An identifier of the content (xxh3-64): equal on both partners when they
    /// loaded the same dictionary.
    pub fn id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_out_of_range_are_refused_with_the_fix() {
        let e = ZstdDictionary::new(vec![1; 10]).unwrap_err().to_string();
        assert!(e.contains("zstd --train"), "{e}");
        assert!(ZstdDictionary::new(vec![1; MAX_DICTIONARY_BYTES + 1]).is_err());
        let d = ZstdDictionary::new(b"raw content dictionary ".repeat(20)).unwrap();
        assert_eq!(d.id(), xxh3_64(d.bytes()));
        assert!(!format!("{d:?}").contains("raw content"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = ZstdDictionary::load(Path::new("/nonexistent/shunt.dict"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/shunt.dict"), "{e}");
    }
}
