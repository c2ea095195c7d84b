//! Streaming gRPC bodies decoded without a copy: each message is decoded from the HTTP/2 DATA
//! frames it arrived in ([`FramedMessages`]; by prost, or by a decoder of the caller's that
//! reads the same bytes, [`FramedMessages::with_decoder`]), so a `bytes` field (a batch
//! payload) that lies inside one frame reaches its reader as a slice of that frame. The broker
//! reads Produce and replication requests this way, the SDK Subscribe responses: the one
//! decoder for both ends of the wire.
//!
//! tonic's `Streaming` gathers every DATA frame into one decode buffer before it decodes a
//! message: every byte a peer sent was copied there once (14 % of the broker's CPU under the
//! Rust SDK producer, 15 % of a follower's under replication, 17.5 % of an SDK subscriber's;
//! `perf`, `poll_frame`, docs/PERFORMANCE.md). Here the frames stay in a list ([`FrameList`]);
//! scalar fields are read across frames, and a `bytes` field is taken with `copy_to_bytes`,
//! which slices the frame when the field lies inside one (the SDKs, the replicating leader and
//! the broker's Subscribe send each large payload as a DATA frame of its own, and small ones
//! inside the frame around them: [`INLINE_PAYLOAD_BELOW`]) and copies only when it straddles
//! two.
//!
//! What tonic's decoder checks is checked here the same way, with its codes: a message over the
//! limit is OUT_OF_RANGE, a compressed message (no compression is accepted) or a broken frame
//! INTERNAL, a body that ends inside a message INTERNAL, a peer that cancels ends the stream.
//! A response ([`FramedMessages::response`]) also ends with the status its trailers carry.
//!
//! Invariants:
//! - a message is decoded from exactly the bytes its gRPC prefix declares, never more;
//! - what is buffered is what HTTP/2 delivered and no message has yet taken; frames are read
//!   only when the reader asks for the next message, so flow control still bounds it;
//! - no frame in the list is empty.
//!
//! Never: copy a payload that lies within one frame.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::Stream;
use tonic::codegen::http;
use tonic::{Code, Status};

/// gRPC's message prefix: a compression flag and a 4-byte big-endian length.
pub const PREFIX_LEN: usize = 5;

/// The senders' side of the same bargain (the broker's Subscribe responses, the SDK's Produce
/// requests): a `bytes` payload shorter than this is copied into the framing chunk around it,
/// a longer one goes as a chunk, so an HTTP/2 DATA frame, of its own. The work per frame on
/// both ends costs more than copying up to about 33 KiB and less than copying 61 KiB
/// (docs/PERFORMANCE.md, "Consume: small batches").
pub const INLINE_PAYLOAD_BELOW: usize = 48 << 10;

/// Refuses a request whose messages are compressed (`grpc-encoding` other than identity):
/// none is accepted, and tonic refuses it with these words.
pub fn refuse_compressed(headers: &http::HeaderMap) -> Result<(), Status> {
    match headers.get("grpc-encoding").filter(|e| *e != "identity") {
        None => Ok(()),
        Some(encoding) => Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported by this server",
            encoding.to_str().unwrap_or("unknown")
        ))),
    }
}

/// The messages of one streaming request body, decoded as they complete.
pub struct FramedMessages<M, B = tonic::body::Body> {
    body: B,
    frames: FrameList,
    max_message: usize,
    decode: Decode<M>,
    done: bool,
    /// A response body: its trailers carry the call's status.
    response: bool,
}

/// Reads one message from exactly its bytes. Whatever it leaves unread is skipped.
pub type Decode<M> = fn(&mut Message<'_>) -> Result<M, Status>;

/// The bytes of one message, as the received frames hold them.
pub type Message<'a> = bytes::buf::Take<&'a mut FrameList>;

impl<M: prost::Message + Default, B> FramedMessages<M, B> {
    /// The messages of `body`, each at most `max_message` bytes, decoded by prost.
    pub fn new(body: B, max_message: usize) -> Self {
        Self::with_decoder(body, max_message, |message| {
            M::decode(message).map_err(|e| Status::internal(format!("failed to decode the request: {e}")))
        })
    }
}

impl<M, B> FramedMessages<M, B> {
    /// The messages of `body`, each at most `max_message` bytes, read by `decode`.
    pub fn with_decoder(body: B, max_message: usize, decode: Decode<M>) -> Self {
        Self { body, frames: FrameList::default(), max_message, decode, done: false, response: false }
    }

    /// Reads `body` as a response: a status other than OK in its trailers ends the messages
    /// with that status as an error, after the whole messages that came before it.
    pub fn response(mut self) -> Self {
        self.response = true;
        self
    }

    /// The next whole message in the buffered frames, if one has arrived.
    fn next_message(&mut self) -> Result<Option<M>, Status> {
        let Some(prefix) = self.frames.prefix() else { return Ok(None) };
        match prefix[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ))
            }
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1)"
                )))
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_message
            )));
        }
        if self.frames.remaining() < PREFIX_LEN + len {
            return Ok(None);
        }
        self.frames.advance(PREFIX_LEN);
        let mut message = (&mut self.frames).take(len);
        let decoded = (self.decode)(&mut message);
        // Whatever the decoder left of a bad message goes with it.
        let rest = message.remaining();
        self.frames.advance(rest);
        decoded.map(Some)
    }
}

impl<M, B> Stream for FramedMessages<M, B>
where
    B: http_body::Body<Data = Bytes, Error = Status> + Unpin,
{
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = &mut *self;
        // Each turn either yields or takes one more frame from the body.
        loop {
            if me.done {
                return Poll::Ready(None);
            }
            match me.next_message() {
                Ok(Some(request)) => return Poll::Ready(Some(Ok(request))),
                Ok(None) => {}
                Err(status) => {
                    me.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            match ready!(Pin::new(&mut me.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => me.frames.push(data),
                    // Trailers from a client carry nothing a request needs; a server's carry
                    // the call's status.
                    Err(frame) if me.response => {
                        let status = frame.trailers_ref().and_then(Status::from_header_map);
                        if let Some(status) = status.filter(|s| s.code() != Code::Ok) {
                            me.done = true;
                            return Poll::Ready(Some(Err(status)));
                        }
                    }
                    Err(_) => {}
                },
                Some(Err(status)) => {
                    me.done = true;
                    // A client that cancels ends its requests; tonic does the same. A response
                    // cut off is an error for its reader, whatever the code.
                    let ends_quietly = !me.response && status.code() == Code::Cancelled;
                    return Poll::Ready((!ends_quietly).then_some(Err(status)));
                }
                None => {
                    me.done = true;
                    return Poll::Ready(
                        me.frames.has_remaining().then(|| Err(Status::internal("Unexpected EOF decoding stream."))),
                    );
                }
            }
        }
    }
}

/// Received DATA frames not yet decoded, read in order as one buffer.
#[derive(Debug, Default)]
pub struct FrameList {
    frames: VecDeque<Bytes>,
    len: usize,
}

impl FrameList {
    fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.len += frame.len();
            self.frames.push_back(frame);
        }
    }

    /// The first gRPC prefix, if that much has arrived (it may span frames).
    fn prefix(&self) -> Option<[u8; PREFIX_LEN]> {
        if self.len < PREFIX_LEN {
            return None;
        }
        let mut out = [0u8; PREFIX_LEN];
        for (slot, byte) in out.iter_mut().zip(self.frames.iter().flat_map(|f| f.iter())) {
            *slot = *byte;
        }
        Some(out)
    }
}

impl Buf for FrameList {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.frames.front().map_or(&[], |f| &f[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of the received frames");
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.frames.front_mut() else { return };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.frames.pop_front();
        }
    }

    /// A slice of the first frame when it holds all `len` bytes; a copy otherwise.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.len, "copy past the end of the received frames");
        if let Some(front) = self.frames.front_mut() {
            if len <= front.len() {
                let out = front.split_to(len);
                if front.is_empty() {
                    self.frames.pop_front();
                }
                self.len -= len;
                return out;
            }
        }
        let mut out = BytesMut::with_capacity(len);
        out.put(Buf::take(&mut *self, len));
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use futures::StreamExt;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use prost::Message as _;

    fn request(i: u64, payload: Bytes) -> wire::ProduceRequest {
        wire::ProduceRequest {
            request_id: i,
            topic: format!("orders-{i}"),
            partition: i as u32,
            record_count: 3,
            crc32c: Some(0xdead_beef ^ i as u32),
            payload: Some(wire::produce_request::Payload::Records(payload)),
            ..Default::default()
        }
    }

    fn framed(r: &wire::ProduceRequest) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(r.encoded_len() as u32).to_be_bytes());
        r.encode(&mut out).expect("encodes");
        out
    }

    type Frames = Vec<Result<Frame<Bytes>, Status>>;

    async fn decode_all(frames: Frames, max: usize) -> Vec<Result<wire::ProduceRequest, Status>> {
        let body = StreamBody::new(futures::stream::iter(frames));
        FramedMessages::new(body, max).collect().await
    }

    fn data(bytes: &[u8]) -> Result<Frame<Bytes>, Status> {
        Ok(Frame::data(Bytes::copy_from_slice(bytes)))
    }

    #[tokio::test]
    async fn requests_split_anywhere_decode_to_what_was_sent() {
        let big = Bytes::from((0..70_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let sent = [request(1, Bytes::from_static(b"first")), request(2, big.clone()), request(3, Bytes::new())];
        let stream: Vec<u8> = sent.iter().flat_map(framed).collect();
        // Cut the whole stream every `step` bytes: prefixes, fields and payloads all straddle.
        for step in [1usize, 2, 3, 5, 7, 64, 4_096, 65_536, stream.len()] {
            let frames = stream.chunks(step).map(data).collect();
            let got: Vec<_> = decode_all(frames, usize::MAX).await.into_iter().map(|r| r.expect("decodes")).collect();
            assert_eq!(got, sent, "frames of {step} bytes");
        }
    }

    #[tokio::test]
    async fn a_payload_in_a_frame_of_its_own_is_not_copied() {
        // As the SDKs send it: a head frame (prefix, scalars, the payload's key and length),
        // then the payload alone.
        let payload = Bytes::from(vec![7u8; 4_096]);
        // Fields numbered below the payload's only, so prost also writes the payload last.
        let sent = wire::ProduceRequest {
            request_id: 9,
            topic: "orders".into(),
            partition: 2,
            payload: Some(wire::produce_request::Payload::Records(payload.clone())),
            ..Default::default()
        };
        let whole = framed(&sent);
        let head = &whole[..whole.len() - payload.len()];
        let frames = vec![data(head), Ok(Frame::data(payload.clone()))];
        let got = decode_all(frames, usize::MAX).await.remove(0).expect("decodes");
        assert_eq!(got, sent);
        let Some(wire::produce_request::Payload::Records(records)) = got.payload else { panic!("no payload") };
        assert_eq!(records.as_ptr(), payload.as_ptr(), "the very bytes received");
        assert_eq!(records.len(), payload.len());
    }

    #[tokio::test]
    async fn what_tonic_refuses_is_refused_with_its_codes() {
        let ok = framed(&request(1, Bytes::from_static(b"x")));
        let mut compressed = ok.clone();
        compressed[0] = 1;
        let mut bad_flag = ok.clone();
        bad_flag[0] = 7;
        let garbage = [0u8, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        let cases: [(Frames, usize, Code, &str); 5] = [
            (vec![data(&ok)], 4, Code::OutOfRange, "the limit is: 4 bytes"),
            (vec![data(&compressed)], usize::MAX, Code::Internal, "compressed-flag"),
            (vec![data(&bad_flag)], usize::MAX, Code::Internal, "invalid compression flag: 7"),
            (vec![data(&garbage)], usize::MAX, Code::Internal, "failed to decode"),
            (vec![data(&ok[..ok.len() - 1])], usize::MAX, Code::Internal, "Unexpected EOF"),
        ];
        for (frames, max, code, says) in cases {
            let got = decode_all(frames, max).await;
            assert_eq!(got.len(), 1, "one error ends the stream: {says}");
            let err = got.into_iter().next().and_then(Result::err).expect("an error");
            assert_eq!(err.code(), code, "{says}: {}", err.message());
            assert!(err.message().contains(says), "{says}: {}", err.message());
        }
    }

    fn trailers(status: &str, message: &str) -> Result<Frame<Bytes>, Status> {
        let mut t = tonic::codegen::http::HeaderMap::new();
        t.insert("grpc-status", status.parse().expect("a header value"));
        t.insert("grpc-message", message.parse().expect("a header value"));
        Ok(Frame::trailers(t))
    }

    #[tokio::test]
    async fn a_response_ends_with_the_status_of_its_trailers() {
        let read = |frames: Frames| async move {
            let body = StreamBody::new(futures::stream::iter(frames));
            FramedMessages::<wire::ProduceRequest, _>::new(body, usize::MAX).response().collect::<Vec<_>>().await
        };
        let ok = framed(&request(1, Bytes::from_static(b"x")));
        let sent = request(1, Bytes::from_static(b"x"));
        // OK trailers: the messages, then the end.
        let got = read(vec![data(&ok), data(&ok), trailers("0", "")]).await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| r.as_ref().is_ok_and(|m| *m == sent)));
        // An error in the trailers comes after the whole messages, with its code and words.
        let got = read(vec![data(&ok), trailers("5", "topic%20gone")]).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().expect("the whole message"), &sent);
        let status = got[1].as_ref().expect_err("the trailers' status");
        assert_eq!((status.code(), status.message()), (Code::NotFound, "topic gone"));
        // A response cut off is an error even when the transport calls it cancelled (a request
        // body would end quietly).
        let got = read(vec![data(&ok), Err(Status::cancelled("connection closed"))]).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().map_err(Status::code).expect_err("the error"), Code::Cancelled);
        // Trailers of a request body change nothing.
        let body = StreamBody::new(futures::stream::iter(vec![data(&ok), trailers("5", "x")]));
        let got: Vec<_> = FramedMessages::<wire::ProduceRequest, _>::new(body, usize::MAX).collect().await;
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_client_ends_the_requests_after_the_whole_ones() {
        let ok = framed(&request(1, Bytes::from_static(b"x")));
        let frames = vec![data(&ok), data(&ok[..3]), Err(Status::cancelled("client went away"))];
        let got = decode_all(frames, usize::MAX).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].as_ref().expect("the whole request"), &request(1, Bytes::from_static(b"x")));
        let broken = vec![data(&ok), Err(Status::unknown("connection reset"))];
        let got = decode_all(broken, usize::MAX).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().map_err(Status::code).expect_err("the error"), Code::Unknown);
    }
}
