//! Batch compression. A compressed payload is an encoded `RecordBatch` compressed as a whole,
//! in a standard, self-describing container so any SDK can read it: the LZ4 frame format and
//! the Zstandard frame format. The codec numbers are the proto's `Compression` values.

use std::io::Write;

use bytes::Bytes;

use crate::Error;

/// Codec of a batch payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    None,
    /// LZ4 frame format: fast, modest ratio. The producer default.
    #[default]
    Lz4,
    /// Zstandard (level 3): slower, better ratio.
    Zstd,
}

/// Zstandard level used when compressing (the library's default).
const ZSTD_LEVEL: i32 = 3;
/// Refuse to inflate a payload beyond this (a corrupt or hostile batch must not exhaust memory).
const MAX_DECOMPRESSED_BYTES: u64 = 256 << 20;

impl Compression {
    /// The proto's `Compression` value.
    pub fn codec(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    pub fn from_codec(codec: i32) -> Result<Self, Error> {
        match codec {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Zstd),
            other => Err(Error::Decode(format!("unknown compression codec {other}"))),
        }
    }

    pub fn compress(self, raw: &[u8]) -> Result<Bytes, Error> {
        let io = |e: std::io::Error| Error::InvalidArgument(format!("compression failed: {e}"));
        match self {
            Compression::None => Ok(Bytes::copy_from_slice(raw)),
            Compression::Lz4 => {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(raw.len() / 2 + 64));
                enc.write_all(raw).map_err(io)?;
                enc.finish().map(Bytes::from).map_err(|e| io(std::io::Error::other(e)))
            }
            Compression::Zstd => zstd::bulk::compress(raw, ZSTD_LEVEL).map(Bytes::from).map_err(io),
        }
    }

    pub fn decompress(self, compressed: &[u8]) -> Result<Vec<u8>, Error> {
        if self == Compression::None {
            return Ok(compressed.to_vec());
        }
        tidelog_proto::inflate::inflate(self.codec(), compressed, MAX_DECOMPRESSED_BYTES)
            .map_err(|e| Error::Decode(format!("{self:?} payload does not decompress: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let raw: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 97).to_le_bytes()).collect();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let packed = c.compress(&raw).unwrap();
            if c != Compression::None {
                assert!(packed.len() < raw.len() / 4, "{c:?} compressed {} to {}", raw.len(), packed.len());
                assert!(c.decompress(&packed[..packed.len() / 2]).is_err(), "{c:?} accepted a truncated payload");
            }
            assert_eq!(c.decompress(&packed).unwrap(), raw);
            assert_eq!(Compression::from_codec(c.codec()).unwrap(), c);
        }
    }
}
