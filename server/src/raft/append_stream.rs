//! Pipelined replication (`StreamAppend`) framed by hand at both ends, so a replicated batch
//! goes from the leader's log to the follower's without a copy in user space.
//!
//! With tonic's codecs every replicated byte was copied three times on its way: into the
//! encoded request body and then into tonic's encode buffer on the leader (once per follower:
//! 24 % of a leader's CPU under the SDK producer), and into tonic's decode buffer on the
//! follower (15 % of its CPU; `perf`, docs/PERFORMANCE.md). Here:
//! - the leader ([`call`]) sends each request as chunks: a head with the gRPC prefix and the
//!   `RaftMessage` framing, then `rpc_codec::encode_append_body`'s chunks, in which a stored
//!   batch payload is the very `Bytes` read from the leader's log. h2 sends each chunk as a
//!   DATA frame and writes the large ones with their frame header in one `writev`;
//! - the follower ([`RaftRoutes`]) takes `/tidelog.internal.v1.RaftTransport/StreamAppend`
//!   before tonic's generated server and decodes the requests from the frames they came in
//!   (`grpc::requests`): a payload that arrived as a frame of its own is a slice of it. Every
//!   other call goes to the generated server.
//!
//! The wire format is unchanged: a peer of an earlier version reads these requests and sends
//! requests this one reads.
//!
//! Invariants: the chunks of one request, concatenated, are prost's encoding of the
//! `RaftMessage { group_id, body }` it stands for (fields in prost's order); the follower checks
//! what tonic checks, with its codes (`grpc::requests`).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use prost::encoding::{
    decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len, skip_field, DecodeContext,
    WireType,
};
use prost::DecodeError;
use tidelog_proto::internal::raft_transport_server::RaftTransportServer;
use tidelog_proto::internal::RaftMessage;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tower::ServiceExt;

use super::rpc_codec::{self, AppendBody};
use super::transport::{AppendMessage, RaftTransportService};
use crate::grpc::requests::{self, FramedMessages};
use crate::grpc::{self, Chunks};

const STREAM_APPEND_PATH: &str = "/tidelog.internal.v1.RaftTransport/StreamAppend";
/// `RaftMessage`'s field numbers (proto/internal/tidelog/internal/v1/raft.proto).
const MESSAGE_GROUP_ID: u32 = 1;
const MESSAGE_BODY: u32 = 2;

/// One request as the chunks of its gRPC frame: a head (prefix, `group_id`, the body's key and
/// length) and the body's chunks. Refused (OUT_OF_RANGE) over `max_message` bytes.
pub fn frame_request(group_id: u64, body: AppendBody, max_message: usize) -> Result<Chunks, Status> {
    // prost leaves out fields at their default value: group 0 and an empty body.
    let id_len = if group_id == 0 { 0 } else { key_len(MESSAGE_GROUP_ID) + encoded_len_varint(group_id) };
    let body_key_len = if body.len == 0 { 0 } else { key_len(MESSAGE_BODY) + encoded_len_varint(body.len as u64) };
    let mut head = BytesMut::with_capacity(grpc::PREFIX_LEN + id_len + body_key_len);
    grpc::put_prefix(&mut head, id_len + body_key_len + body.len, max_message)?;
    if group_id != 0 {
        encode_key(MESSAGE_GROUP_ID, WireType::Varint, &mut head);
        encode_varint(group_id, &mut head);
    }
    if body.len != 0 {
        encode_key(MESSAGE_BODY, WireType::LengthDelimited, &mut head);
        encode_varint(body.len as u64, &mut head);
    }
    let mut chunks = body.chunks;
    chunks.push_front(head.freeze());
    Ok(chunks)
}

/// Opens a `StreamAppend` call on `channel` carrying `requests` (already framed by
/// [`frame_request`]); its answers, decoded as tonic decodes them. An error status the peer
/// answers at once (UNIMPLEMENTED from a peer without the method, NOT_FOUND for a group it
/// does not host) is the error.
pub async fn call<S>(channel: Channel, requests: S, max_answer: usize) -> Result<Streaming<RaftMessage>, Status>
where
    S: Stream<Item = Chunks> + Send + 'static,
{
    let body = grpc::body::streaming_request(Box::pin(requests.map(Ok)));
    let mut request = http::Request::new(body);
    *request.method_mut() = http::Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    *request.uri_mut() = http::Uri::from_static(STREAM_APPEND_PATH);
    let headers = request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let response = channel.oneshot(request).await.map_err(|e| Status::from_error(Box::new(e)))?;
    // As tonic's client: a grpc-status in the headers is a trailers-only answer.
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
    }
    let status_code = response.status();
    let decoder = tonic_prost::ProstDecoder::<RaftMessage>::default();
    Ok(Streaming::new_response(decoder, response.into_body(), status_code, None, Some(max_answer)))
}

/// Reads one `StreamAppend` request from the frames it came in: `RaftMessage`'s fields by
/// hand, so that its body is decoded where it lies (`rpc_codec::decode_append_from`) and each
/// batch payload that arrived as a frame of its own stays a slice of that frame. A protobuf
/// error is INTERNAL, as prost's would be; a body that is not an append request is the
/// message's `rpc` error (the stream answers it INVALID_ARGUMENT).
fn decode_request(message: &mut requests::Message<'_>) -> Result<AppendMessage, Status> {
    let broken = |e: DecodeError| Status::internal(format!("failed to decode the request: {e}"));
    let (mut group_id, mut rpc) = (0, None);
    while message.has_remaining() {
        let (tag, wire_type) = decode_key(message).map_err(broken)?;
        match (tag, wire_type) {
            (MESSAGE_GROUP_ID, WireType::Varint) => group_id = decode_varint(message).map_err(broken)?,
            (MESSAGE_BODY, WireType::LengthDelimited) => {
                let len = decode_varint(message).map_err(broken)?;
                let len = usize::try_from(len).ok().filter(|l| *l <= message.remaining());
                let len = len.ok_or_else(|| Status::internal("failed to decode the request: buffer underflow"))?;
                let mut body = message.take(len);
                rpc = Some(rpc_codec::decode_append_from(&mut body));
                let rest = body.remaining();
                message.advance(rest);
            }
            _ => skip_field(wire_type, tag, message, DecodeContext::default()).map_err(broken)?,
        }
    }
    // An absent body is an empty one, as prost reads it.
    let rpc = rpc.unwrap_or_else(|| rpc_codec::decode_append_request(&Bytes::new()));
    Ok(AppendMessage { group_id, rpc })
}

/// The Raft transport as served: `StreamAppend` here, the rest by tonic's generated server.
#[derive(Clone)]
pub struct RaftRoutes {
    service: RaftTransportService,
    generated: RaftTransportServer<RaftTransportService>,
    max_message: usize,
}

impl RaftRoutes {
    /// Serves `service`, with messages of up to `max_message` bytes either way.
    pub fn new(service: RaftTransportService, max_message: usize) -> Self {
        let generated = RaftTransportServer::new(service.clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        Self { service, generated, max_message }
    }
}

impl NamedService for RaftRoutes {
    const NAME: &'static str = <RaftTransportServer<RaftTransportService> as NamedService>::NAME;
}

impl tower::Service<http::Request<tonic::body::Body>> for RaftRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != STREAM_APPEND_PATH {
            return Box::pin(tower::Service::call(&mut self.generated, req));
        }
        let (service, max) = (self.service.clone(), self.max_message);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            if let Err(status) = requests::refuse_compressed(&parts.headers) {
                return Ok(status.into_http());
            }
            Ok(match service.append_stream(FramedMessages::with_decoder(body, max, decode_request)).await {
                Ok(answers) => {
                    grpc::body::streaming_response(answers.map(move |a| a.and_then(|m| grpc::frame_whole(m, max))))
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::rpc_codec::stored_entry;
    use crate::raft::types::{log_id, BatchData, Entry, EntryPayload, PartitionTc, Vote};
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use openraft::raft::AppendEntriesRequest;
    use prost::Message as _;

    /// A blank entry, a small batch (copied into the framing) and a large one (its own chunk).
    fn request(big: &Bytes) -> AppendEntriesRequest<PartitionTc> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(2, 7)),
            leader_commit: Some(log_id(2, 6)),
            entries: vec![
                Entry { log_id: log_id(2, 8), payload: EntryPayload::Blank },
                stored_entry(9, Bytes::from_static(b"a small batch")),
                stored_entry(10, big.clone()),
            ],
        }
    }

    fn big() -> Bytes {
        Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }

    fn chunks_of(group_id: u64, rpc: &AppendEntriesRequest<PartitionTc>) -> Chunks {
        frame_request(group_id, rpc_codec::encode_append_body(rpc).expect("encodes"), usize::MAX).expect("framed")
    }

    fn joined(chunks: &Chunks) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    async fn decode_all(frames: Vec<Bytes>) -> Vec<Result<AppendMessage, Status>> {
        let body = StreamBody::new(futures::stream::iter(frames.into_iter().map(|f| Ok(Frame::data(f)))));
        FramedMessages::with_decoder(body, usize::MAX, decode_request).collect().await
    }

    fn payloads(rpc: &AppendEntriesRequest<PartitionTc>) -> Vec<&Bytes> {
        rpc.entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(BatchData::Stored(b)) => Some(&b.payload),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_framed_request_is_prosts_encoding_with_large_payloads_as_their_own_chunks() {
        let big = big();
        let rpc = request(&big);
        for group_id in [0, 1, 300, u64::MAX] {
            let chunks = chunks_of(group_id, &rpc);
            let bytes = joined(&chunks);
            let body = rpc_codec::encode_append_request(&rpc).expect("encodes");
            let message = RaftMessage { group_id, body: body.into() };
            let mut expected = vec![0u8];
            expected.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
            message.encode(&mut expected).expect("encodes");
            assert_eq!(bytes, expected, "group {group_id}: as tonic would have framed it");
            assert!(chunks.iter().any(|c| c.as_ptr() == big.as_ptr() && c.len() == big.len()), "the stored bytes");
            assert!(!chunks.iter().any(|c| c.is_empty()), "no empty chunk");
        }
        let err = frame_request(1, rpc_codec::encode_append_body(&rpc).expect("encodes"), 1_000).expect_err("limit");
        assert_eq!(err.code(), tonic::Code::OutOfRange);
    }

    #[tokio::test]
    async fn requests_read_from_their_frames_keep_large_payloads_where_they_arrived() {
        let big = big();
        let rpc = request(&big);
        // As h2 delivers them: each chunk a DATA frame (the large payload fits one).
        let frames: Vec<Bytes> = chunks_of(5, &rpc).into_iter().chain(chunks_of(5, &rpc)).collect();
        let got = decode_all(frames).await;
        assert_eq!(got.len(), 2);
        for m in got {
            let m = m.expect("decodes");
            assert_eq!(m.group_id, 5);
            let decoded = m.rpc.expect("an append request");
            assert_eq!(decoded.entries, rpc.entries);
            assert_eq!(
                (decoded.vote, decoded.prev_log_id, decoded.leader_commit),
                (rpc.vote, rpc.prev_log_id, rpc.leader_commit)
            );
            assert_eq!(payloads(&decoded)[1].as_ptr(), big.as_ptr(), "the very bytes received, not a copy");
        }
        // Cut anywhere, by a peer with other frame sizes: the same requests, copied as needed.
        let stream = joined(&chunks_of(5, &rpc));
        for step in [1usize, 7, 4_096, 65_536] {
            let frames = stream.chunks(step).map(Bytes::copy_from_slice).collect();
            let got = decode_all(frames).await;
            assert_eq!(got.len(), 1, "frames of {step} bytes");
            let decoded = got.into_iter().next().and_then(|m| m.ok()).and_then(|m| m.rpc.ok()).expect("decodes");
            assert_eq!(decoded.entries, rpc.entries, "frames of {step} bytes");
        }
    }

    #[tokio::test]
    async fn what_a_peer_framed_with_tonic_reads_the_same_and_bad_input_is_refused() {
        let big = big();
        let rpc = request(&big);
        // An earlier broker's leader: prost's encoding, then an unknown field (a later version's).
        let body = Bytes::from(rpc_codec::encode_append_request(&rpc).expect("encodes"));
        let mut message = RaftMessage { group_id: 9, body }.encode_to_vec();
        message.extend_from_slice(&[0x18, 0x2a]); // field 3, varint 42
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        let got = decode_all(vec![Bytes::from(framed)]).await;
        let m = got.into_iter().next().expect("one").expect("decodes");
        assert_eq!(m.group_id, 9);
        assert_eq!(m.rpc.expect("an append request").entries, rpc.entries);

        // A body that is no append request: the message decodes, its request does not.
        let garbage = RaftMessage { group_id: 1, body: Bytes::from_static(b"\x01garbage") }.encode_to_vec();
        let mut framed = vec![0u8, 0, 0, 0, garbage.len() as u8];
        framed.extend_from_slice(&garbage);
        let m = decode_all(vec![Bytes::from(framed)]).await.remove(0).expect("the message decodes");
        assert!(m.rpc.is_err(), "garbage decoded as an append request");
        // Broken protobuf (a body longer than the message): INTERNAL, as prost's error is.
        let broken = [0u8, 0, 0, 0, 3, 0x12, 0x7f, 0x01];
        let err = decode_all(vec![Bytes::copy_from_slice(&broken)]).await.remove(0).expect_err("broken");
        assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    }
}
