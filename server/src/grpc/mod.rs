//! gRPC messages framed and read by the broker itself, on the paths where tonic's codec would
//! copy every payload byte once more: Subscribe and Produce (`api`), and replication between
//! brokers (`raft/transport.rs`, `raft/append_stream.rs`).
//!
//! A gRPC message on the wire is a 5-byte prefix (a compression flag, then the message's
//! length as a big-endian `u32`) followed by the protobuf encoding. tonic writes each message
//! into one encode buffer on the way out and gathers every received DATA frame into one decode
//! buffer on the way in. Here instead:
//! - out ([`body`]): a message is a list of chunks ([`Chunks`]): small ones with the prefix and
//!   the protobuf framing, and between them the payload `Bytes` exactly as they are held. h2
//!   sends each chunk as a DATA frame and writes a payload of more than 256 bytes with its
//!   frame header in one `writev`, not copied;
//! - in ([`requests`], `tidelog_proto::frames`, shared with the SDK's Subscribe): the frames
//!   stay as they came, and prost decodes each message from the list; a `bytes` field that
//!   lies inside one frame is a slice of it.
//!
//! Invariants: the chunks of one message, concatenated, are its gRPC frame; what is refused is
//! refused with the codes tonic gives (OUT_OF_RANGE over the size limit, INTERNAL for a broken
//! frame or a compressed message).
//!
//! Never: copy a payload that lies within one frame; import any other module of this crate
//! (it is a leaf below `api` and `raft`).

pub mod body;
/// Reading streamed requests: the decoder the SDK reads Subscribe responses with.
pub use tidelog_proto::frames as requests;

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::Status;

/// gRPC's message prefix: a compression flag and a 4-byte big-endian length.
pub use tidelog_proto::frames::PREFIX_LEN;

/// The chunks of one message's gRPC frame, in order.
pub type Chunks = VecDeque<Bytes>;

/// Starts a message of `len` bytes: its uncompressed gRPC prefix written to `out`. Refused as
/// tonic refuses it (OUT_OF_RANGE) over `max_message` bytes.
pub fn put_prefix(out: &mut BytesMut, len: usize, max_message: usize) -> Result<(), Status> {
    if len > max_message {
        return Err(Status::out_of_range(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {max_message} bytes"
        )));
    }
    let len = u32::try_from(len).map_err(|_| Status::out_of_range("message over 4 GiB"))?;
    out.put_u8(0); // not compressed
    out.put_u32(len);
    Ok(())
}

/// A small message as one chunk: the gRPC prefix and prost's encoding.
pub fn frame_whole<M: Message>(message: M, max_message: usize) -> Result<Chunks, Status> {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX_LEN + len);
    put_prefix(&mut out, len, max_message)?;
    message.encode(&mut out).map_err(encode_error)?;
    Ok(VecDeque::from([out.freeze()]))
}

/// Only a full buffer fails an encode, and a `BytesMut` grows.
pub fn encode_error(e: prost::EncodeError) -> Status {
    Status::internal(format!("encoding a message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_proto::wire;

    #[test]
    fn a_whole_message_is_framed_as_prost_encodes_it_and_refused_over_the_limit() {
        let answer = wire::ProduceResponse { request_id: 7, base_offset: 1_000, ..Default::default() };
        let chunks = frame_whole(answer.clone(), usize::MAX).expect("framed");
        assert_eq!(chunks.len(), 1);
        let bytes = &chunks[0];
        assert_eq!(&bytes[..PREFIX_LEN], &[0, 0, 0, 0, answer.encoded_len() as u8]);
        assert_eq!(wire::ProduceResponse::decode(&bytes[PREFIX_LEN..]).expect("decodes"), answer);
        let err = frame_whole(answer, 2).expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert!(err.message().contains("the limit is: 2 bytes"), "{}", err.message());
    }
}
