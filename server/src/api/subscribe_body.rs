//! Subscribe responses framed by hand, so the bytes of stored batches reach the socket without
//! passing through an encode buffer.
//!
//! tonic encodes each streamed message with prost into one buffer: every payload byte a
//! subscriber is sent was copied there once more (8.5 % of the broker's CPU per byte served,
//! `perf`; docs/PERFORMANCE.md). Here a `SubscribeResponse` becomes a list of chunks
//! (`crate::grpc`): small ones holding the gRPC message prefix and the protobuf framing
//! (field keys, lengths, the scalar fields), and between them each batch's payload `Bytes`
//! exactly as read from the log. A payload under [`INLINE_PAYLOAD_BELOW`] is copied into the
//! framing chunk instead: each chunk is an HTTP/2 DATA frame of its own, and the work per
//! frame on both ends (h2's stream lock, flow control, the frame header, a wake-up) costs more
//! than copying tens of KiB. Catch-up reads of 1-record 1 KiB batches went out as two frames
//! per record, at a sixth of the speed they reach now.
//!
//! [`RecordRoutes`] stands where tonic's generated `RecordServiceServer` stood: it takes
//! `/tidelog.v1.RecordService/Subscribe` itself (the request decoded as tonic would, the
//! subscription opened by the very `RecordService::subscribe` the generated server calls) and
//! `/tidelog.v1.RecordService/Produce` (`produce_requests.rs`), and passes every other call to
//! that server. Both responses go out as `grpc::body::streaming_response`.
//!
//! Invariants:
//! - the chunks of one response, concatenated, are the gRPC frame of a protobuf encoding of
//!   that response (fields in another order than prost's, which protobuf allows: a decoder
//!   takes fields in any order, and repeated fields in the order they come);
//! - nothing is buffered beyond one response (`grpc::body`), so HTTP/2 flow control still
//!   holds back the log readers of a slow subscriber.
//!
//! Never: re-encode a batch payload, or copy one of [`INLINE_PAYLOAD_BELOW`] bytes or more.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use http_body_util::BodyExt;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message;
use tidelog_proto::frames::INLINE_PAYLOAD_BELOW;
use tidelog_proto::wire;
use tidelog_proto::wire::record_service_server::{RecordService, RecordServiceServer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::Status;

use super::produce_requests;
use super::records::RecordApi;
use super::MAX_MESSAGE_BYTES;
use crate::grpc::{self, PREFIX_LEN};

/// The methods taken here.
const SUBSCRIBE_PATH: &str = "/tidelog.v1.RecordService/Subscribe";
const PRODUCE_PATH: &str = "/tidelog.v1.RecordService/Produce";
/// Protobuf field numbers this file writes (records_service.proto).
const RESPONSE_BATCHES: u32 = 2;
const BATCH_RECORDS: u32 = 5;
const BATCH_COMPRESSED_RECORDS: u32 = 6;

/// The record service as served: Subscribe and Produce here, the rest by tonic.
#[derive(Clone)]
pub struct RecordRoutes {
    api: Arc<RecordApi>,
    generated: RecordServiceServer<RecordApi>,
}

impl RecordRoutes {
    pub fn new(api: RecordApi) -> Self {
        let api = Arc::new(api);
        let generated = RecordServiceServer::from_arc(Arc::clone(&api))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self { api, generated }
    }
}

impl NamedService for RecordRoutes {
    const NAME: &'static str = <RecordServiceServer<RecordApi> as NamedService>::NAME;
}

impl tower::Service<http::Request<tonic::body::Body>> for RecordRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() == PRODUCE_PATH {
            let response = produce_requests::serve(&self.api, req);
            return Box::pin(async move { Ok(response) });
        }
        if req.uri().path() != SUBSCRIBE_PATH {
            return Box::pin(tower::Service::call(&mut self.generated, req));
        }
        let api = Arc::clone(&self.api);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let request = match unary_message::<wire::SubscribeRequest>(&parts.headers, body).await {
                Ok(m) => tonic::Request::from_http(http::Request::from_parts(parts, m)),
                Err(status) => return Ok(status.into_http()),
            };
            Ok(match api.subscribe(request).await {
                Ok(response) => subscribe_response(response.into_inner()),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The single message of a unary request body, refused as tonic refuses it: compressed
/// (this service accepts no compression) or over the message limit.
async fn unary_message<M: Message + Default>(headers: &http::HeaderMap, body: tonic::body::Body) -> Result<M, Status> {
    let limited = http_body_util::Limited::new(body, MAX_MESSAGE_BYTES + PREFIX_LEN);
    let mut bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::resource_exhausted(format!("request over the {MAX_MESSAGE_BYTES}-byte message limit")))
        }
        Err(e) => return Err(Status::cancelled(format!("the request did not arrive whole: {e}"))),
    };
    if bytes.len() < PREFIX_LEN {
        return Err(Status::internal("request body holds no complete gRPC message"));
    }
    let compressed = bytes.get_u8();
    let len = bytes.get_u32() as usize;
    if compressed != 0 {
        let encoding = headers.get("grpc-encoding").and_then(|v| v.to_str().ok()).unwrap_or("unknown");
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{encoding}` which isn't supported by this server"
        )));
    }
    if len != bytes.len() {
        return Err(Status::internal(format!("request message says {len} bytes but {} came", bytes.len())));
    }
    M::decode(bytes).map_err(|e| Status::internal(format!("failed to decode the request: {e}")))
}

fn subscribe_response(
    responses: ReceiverStream<Result<wire::SubscribeResponse, Status>>,
) -> http::Response<tonic::body::Body> {
    grpc::body::streaming_response(responses.map(|r| r.and_then(|response| frame(response, MAX_MESSAGE_BYTES))))
}

/// One response as the chunks of its gRPC frame: framing chunks, and each batch payload of
/// [`INLINE_PAYLOAD_BELOW`] bytes or more as its own chunk (smaller ones inside the framing).
/// Refused (as tonic refuses it) if over `max_message` bytes.
fn frame(mut response: wire::SubscribeResponse, max_message: usize) -> Result<VecDeque<Bytes>, Status> {
    let batches = std::mem::take(&mut response.batches);
    // Each batch: its scalar fields, then its payload field's key and length (the payload
    // itself goes alone unless it is small). `framing`: every byte but the payloads that go
    // alone, all in one buffer.
    let mut heads = Vec::with_capacity(batches.len());
    let mut framing = PREFIX_LEN + response.encoded_len();
    let mut total = response.encoded_len();
    for mut batch in batches {
        let payload = match batch.payload.take() {
            Some(wire::batch::Payload::Records(b)) => Some((BATCH_RECORDS, b)),
            Some(wire::batch::Payload::CompressedRecords(b)) => Some((BATCH_COMPRESSED_RECORDS, b)),
            None => None,
        };
        let payload_key = payload.as_ref().map_or(0, |(f, b)| key_len(*f) + encoded_len_varint(b.len() as u64));
        let payload_len = payload.as_ref().map_or(0, |(_, b)| b.len());
        let batch_len = batch.encoded_len() + payload_key + payload_len;
        let batch_key = key_len(RESPONSE_BATCHES) + encoded_len_varint(batch_len as u64);
        total += batch_key + batch_len;
        framing += batch_key + batch_len - if payload_len < INLINE_PAYLOAD_BELOW { 0 } else { payload_len };
        heads.push((batch, payload, batch_len));
    }
    let mut chunks = VecDeque::with_capacity(2 * heads.len() + 1);
    let mut head = BytesMut::with_capacity(framing);
    grpc::put_prefix(&mut head, total, max_message)?;
    response.encode(&mut head).map_err(grpc::encode_error)?;
    for (batch, payload, batch_len) in heads {
        encode_key(RESPONSE_BATCHES, WireType::LengthDelimited, &mut head);
        encode_varint(batch_len as u64, &mut head);
        batch.encode(&mut head).map_err(grpc::encode_error)?;
        if let Some((field, payload)) = payload {
            encode_key(field, WireType::LengthDelimited, &mut head);
            encode_varint(payload.len() as u64, &mut head);
            if payload.len() < INLINE_PAYLOAD_BELOW {
                head.extend_from_slice(&payload);
            } else {
                chunks.push_back(head.split().freeze());
                chunks.push_back(payload);
            }
        }
    }
    if !head.is_empty() {
        chunks.push_back(head.freeze());
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: u64, payload: Option<wire::batch::Payload>) -> wire::Batch {
        wire::Batch {
            base_offset: base,
            record_count: 3,
            append_time_ms: 1_700_000_000_000 + base as i64,
            compression: i32::from(base % 2 == 1),
            payload,
            crc32c: 0xdead_beef ^ base as u32,
        }
    }

    fn joined(chunks: &VecDeque<Bytes>) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn framed_responses_decode_to_what_was_framed() {
        let big = Bytes::from((0..70_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let cases = [
            wire::SubscribeResponse::default(),
            wire::SubscribeResponse {
                partition: 7,
                batches: vec![
                    batch(0, Some(wire::batch::Payload::Records(Bytes::from_static(b"first")))),
                    batch(3, Some(wire::batch::Payload::CompressedRecords(big.clone()))),
                    batch(6, Some(wire::batch::Payload::Records(Bytes::new()))),
                    batch(9, None),
                    batch(12, Some(wire::batch::Payload::Records(big.slice(10..300)))),
                ],
                high_watermark: 15,
                read_from: 1,
                throttle_time_ms: 250,
            },
        ];
        for response in cases {
            let chunks = frame(response.clone(), usize::MAX).expect("framed");
            let bytes = joined(&chunks);
            assert_eq!(bytes[0], 0, "not compressed");
            let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
            assert_eq!(len, bytes.len() - PREFIX_LEN, "the prefix gives the message length");
            let decoded = wire::SubscribeResponse::decode(&bytes[PREFIX_LEN..]).expect("decodes");
            assert_eq!(decoded, response);
            assert_eq!(len, response.encoded_len(), "as long as prost's encoding");
        }
    }

    #[test]
    fn payloads_are_sent_as_they_were_read_not_copied() {
        let payload = Bytes::from(vec![7u8; INLINE_PAYLOAD_BELOW]);
        let response = wire::SubscribeResponse {
            batches: vec![batch(0, Some(wire::batch::Payload::Records(payload.clone())))],
            ..Default::default()
        };
        let chunks = frame(response, usize::MAX).expect("framed");
        assert!(
            chunks.iter().any(|c| c.as_ptr() == payload.as_ptr() && c.len() == payload.len()),
            "the payload is its own chunk, the very bytes read"
        );
    }

    /// Small payloads ride in the framing: a response of many small batches is one chunk.
    #[test]
    fn small_payloads_are_copied_into_the_framing() {
        let small = Bytes::from(vec![3u8; INLINE_PAYLOAD_BELOW - 1]);
        let response = wire::SubscribeResponse {
            batches: (0..100).map(|i| batch(i, Some(wire::batch::Payload::Records(small.clone())))).collect(),
            ..Default::default()
        };
        let chunks = frame(response.clone(), usize::MAX).expect("framed");
        assert_eq!(chunks.len(), 1, "one chunk for the whole response");
        assert_eq!(chunks[0].len(), PREFIX_LEN + response.encoded_len(), "the whole message");
        let decoded = wire::SubscribeResponse::decode(&joined(&chunks)[PREFIX_LEN..]).expect("decodes");
        assert_eq!(decoded, response);
    }

    #[test]
    fn a_response_over_the_message_limit_is_refused() {
        let response = wire::SubscribeResponse {
            batches: vec![batch(0, Some(wire::batch::Payload::Records(Bytes::from(vec![0u8; 2048]))))],
            ..Default::default()
        };
        let err = frame(response, 1024).expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert!(err.message().contains("the limit is: 1024 bytes"), "{}", err.message());
    }
}
