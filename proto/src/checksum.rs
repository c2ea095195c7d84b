//! CRC-32C (Castagnoli), the checksum of every batch payload on the wire and on disk: the SDKs
//! compute it when they seal a batch, the broker checks it on produce and on every read of its
//! log, followers when they store replicated entries, and consumers when they decode.
//!
//! One function, so broker and SDKs compute it the same way and the fastest implementation is
//! chosen once. It is `crc-fast`'s CRC-32/ISCSI, which picks a carry-less-multiply (PCLMULQDQ,
//! PMULL) algorithm for the CPU at run time. The `crc32c` crate it replaced runs the SSE 4.2
//! `crc32` instruction three ways in parallel: 5.6 GB/s on this development machine's AMD EPYC
//! against 7.6 GB/s (1 MiB buffers), and the checksum was half of the SDK's batch decode
//! (docs/PERFORMANCE.md, "SDK (criterion, no network)").
//!
//! Invariant: the value is the standard CRC-32C (`check` of "123456789" = 0xE3069283), the
//! same as every earlier version wrote; stored data and other SDKs depend on it.

use crc_fast::CrcAlgorithm;

/// The CRC-32C of `bytes`.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    // CRC-32/ISCSI is a 32-bit CRC: the u64 holds it in its low half.
    crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// The CRC-32C of `first` followed by `second`, without joining them.
pub fn crc32c_of_two(first: &[u8], second: &[u8]) -> u32 {
    let mut digest = crc_fast::Digest::new(CrcAlgorithm::Crc32Iscsi);
    digest.update(first);
    digest.update(second);
    digest.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_the_standard_crc32c_at_every_length_and_alignment() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let data: Vec<u8> = (0..70_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        // Every small length (the tails of the SIMD loops), then large ones, at odd offsets.
        let lengths = (0..300).chain([1_000, 4_095, 4_096, 4_097, 65_536, 69_990]);
        for len in lengths {
            for start in [0, 1, 7] {
                let slice = &data[start..start + len];
                assert_eq!(crc32c(slice), crc32c::crc32c(slice), "length {len} at offset {start}");
            }
        }
        let (a, b) = data.split_at(12_345);
        assert_eq!(
            crc32c_of_two(&a[..100], &b[..5_000]),
            crc32c::crc32c_append(crc32c::crc32c(&a[..100]), &b[..5_000])
        );
    }
}
