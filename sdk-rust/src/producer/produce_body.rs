//! The Produce stream's requests framed by hand, so a batch's bytes reach the socket without
//! passing through an encode buffer. The mirror of the broker's `api/subscribe_body.rs`.
//!
//! tonic encodes each streamed message with prost into one buffer, so every payload byte the
//! producer sent was copied there once more: 13 % of the client's CPU in a profile of the SDK
//! producer (docs/PERFORMANCE.md, "SDK produce: where the client's time goes"). Here a
//! `ProduceRequest` becomes two chunks: a small one with the gRPC message prefix, the scalar
//! fields and the payload's field key and length, then the batch's payload `Bytes` as sealed.
//! hyper sends both as HTTP/2 DATA, and h2 writes a chunk of more than 256 bytes with its
//! frame header in one `writev`, without copying it. A payload under
//! [`INLINE_PAYLOAD_BELOW`] is copied into the first chunk instead: one DATA frame fewer
//! costs less than copying it (as the broker does for Subscribe, `api/subscribe_body.rs`).
//!
//! The call starts as every hand-made call does (`hand_call`: the same channel, credentials
//! and headers as tonic's generated client). Responses are decoded by tonic's `Streaming`
//! with the prost decoder the generated client uses.
//!
//! Invariants:
//! - the chunks of a request (one or two), concatenated, are the gRPC frame of a protobuf
//!   encoding of that request (the payload field last, which protobuf allows: fields may come
//!   in any order);
//! - nothing is buffered beyond one request: the next is taken from the sender's queue only
//!   once both chunks of the last are taken, so HTTP/2 flow control still holds the sender back.
//!
//! Never: copy a batch payload of [`INLINE_PAYLOAD_BELOW`] bytes or more here.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use tidelog_proto::frames::{INLINE_PAYLOAD_BELOW, PREFIX_LEN};
use tidelog_proto::wire;
use tidelog_proto::wire::produce_request::Payload;
use tokio::sync::mpsc;
use tonic::codec::Streaming;
use tonic::Status;
use tonic_prost::ProstDecoder;

use crate::client::Channel;
use crate::{hand_call, Error};

const PRODUCE_PATH: &str = "/tidelog.v1.RecordService/Produce";
/// Protobuf field numbers of the payload (records_service.proto, `ProduceRequest.payload`).
const RECORDS: u32 = 5;
const COMPRESSED_RECORDS: u32 = 6;

/// Opens a Produce stream on `channel` that sends what `requests` yields; returns the
/// stream of responses. Errors as tonic's generated client would give them.
pub(crate) async fn open(
    channel: Channel,
    requests: mpsc::Receiver<wire::ProduceRequest>,
    max_response_bytes: usize,
) -> Result<Streaming<wire::ProduceResponse>, Error> {
    let body = tonic::body::Body::new(ProduceBody { requests, payload: None });
    let response = hand_call::start(channel, PRODUCE_PATH, body).await?;
    if hand_call::ended_in_headers(&response) {
        return Ok(Streaming::new_empty(ProstDecoder::default(), response.into_body()));
    }
    let code = response.status();
    Ok(Streaming::new_response(ProstDecoder::default(), response.into_body(), code, None, Some(max_response_bytes)))
}

/// The request body: each request from the sender's queue as its two chunks.
struct ProduceBody {
    requests: mpsc::Receiver<wire::ProduceRequest>,
    /// The payload chunk of the request whose first chunk went last.
    payload: Option<Bytes>,
}

impl http_body::Body for ProduceBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(payload) = self.payload.take() {
            return Poll::Ready(Some(Ok(Frame::data(payload))));
        }
        match self.requests.poll_recv(cx) {
            Poll::Ready(Some(request)) => {
                let (head, payload) = frame(request);
                self.payload = (!payload.is_empty()).then_some(payload);
                Poll::Ready(Some(Ok(Frame::data(head))))
            }
            // The sender dropped its end: the request stream ends (the call half-closes).
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

/// `request` as two chunks: the gRPC prefix, every field but the payload, and the payload's
/// key and length; then the payload itself, or nothing when the payload was small enough to
/// go in the first chunk.
fn frame(mut request: wire::ProduceRequest) -> (Bytes, Bytes) {
    let (field, payload) = match request.payload.take() {
        Some(Payload::Records(b)) => (RECORDS, b),
        Some(Payload::CompressedRecords(b)) => (COMPRESSED_RECORDS, b),
        None => (RECORDS, Bytes::new()),
    };
    // A request without a payload encodes it anyway (an empty field), as prost would encode
    // `Some(Records(empty))`; the broker refuses an empty batch either way.
    let payload_head = key_len(field) + encoded_len_varint(payload.len() as u64);
    let message_len = request.encoded_len() + payload_head + payload.len();
    let inline = payload.len() < INLINE_PAYLOAD_BELOW;
    let mut head = BytesMut::with_capacity(PREFIX_LEN + message_len - if inline { 0 } else { payload.len() });
    head.put_u8(0); // not compressed (batches carry their own compression)
    head.put_u32(u32::try_from(message_len).unwrap_or(u32::MAX));
    request.encode_raw(&mut head);
    encode_key(field, WireType::LengthDelimited, &mut head);
    encode_varint(payload.len() as u64, &mut head);
    if inline {
        head.extend_from_slice(&payload);
        return (head.freeze(), Bytes::new());
    }
    (head.freeze(), payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(payload: Option<Payload>) -> wire::ProduceRequest {
        wire::ProduceRequest {
            request_id: 7,
            topic: "orders".into(),
            partition: 3,
            acks: -1,
            payload,
            compression: 2,
            record_count: 1000,
            crc32c: Some(0xdead_beef),
            producer_id: 42,
            producer_epoch: 1,
            base_sequence: i32::MAX - 5,
            transactional: true,
        }
    }

    /// The chunks are a gRPC frame of a message prost decodes to the very request; a large
    /// payload is a chunk of its own, the batch's own memory, a small one rides in the first.
    #[test]
    fn chunks_frame_the_request_and_carry_a_large_payload_uncopied() {
        for (payload, size) in [
            (Some(Payload::Records(Bytes::from(vec![b'r'; 1 << 20]))), 1 << 20),
            (Some(Payload::Records(Bytes::from(vec![b'r'; INLINE_PAYLOAD_BELOW]))), INLINE_PAYLOAD_BELOW),
            (Some(Payload::CompressedRecords(Bytes::from(vec![b'c'; INLINE_PAYLOAD_BELOW - 1]))), 0),
            (Some(Payload::CompressedRecords(Bytes::from(vec![b'c'; 300]))), 0),
            (Some(Payload::Records(Bytes::from_static(b"x"))), 0),
            (None, 0),
        ] {
            let original = request(payload);
            let (head, body) = frame(original.clone());
            assert_eq!(body.len(), size, "the payload's own chunk");
            if let Some(Payload::Records(sent) | Payload::CompressedRecords(sent)) = &original.payload {
                if size > 0 {
                    assert_eq!(body.as_ptr(), sent.as_ptr(), "the payload is the batch's bytes, not a copy");
                }
            }
            let mut whole = head.to_vec();
            whole.extend_from_slice(&body);
            assert_eq!(whole[0], 0, "uncompressed gRPC message");
            let len = u32::from_be_bytes([whole[1], whole[2], whole[3], whole[4]]) as usize;
            assert_eq!(len, whole.len() - PREFIX_LEN, "the prefix gives the message's length");
            let decoded = wire::ProduceRequest::decode(&whole[PREFIX_LEN..]).unwrap();
            let expected = wire::ProduceRequest {
                payload: Some(original.payload.clone().unwrap_or(Payload::Records(Bytes::new()))),
                ..original.clone()
            };
            assert_eq!(decoded, expected);
            assert_eq!(len, expected.encoded_len(), "as long as prost's own encoding");
        }
    }
}
