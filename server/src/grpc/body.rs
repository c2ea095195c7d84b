//! A streaming gRPC body sent chunk by chunk ([`ChunkedBody`]): the chunks of each message in
//! turn, as [`super::Chunks`] framed them, each one an HTTP/2 DATA frame. A response body
//! ([`streaming_response`]) ends with trailers carrying the status, as tonic's do; a request
//! body ([`streaming_request`]) just ends.
//!
//! Invariants:
//! - nothing is buffered beyond one message: the next is taken from the stream only when the
//!   chunks of the last are taken, so HTTP/2 flow control still holds back the producer of
//!   the messages (a log reader for a slow subscriber, a leader's replication for a slow
//!   follower);
//! - a response body ends with exactly one trailers frame, after every message's chunks.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use hyper::body::Frame;
use tonic::codegen::http;
use tonic::Status;

use super::Chunks;

/// The body; see the module docs.
pub struct ChunkedBody<S> {
    messages: S,
    chunks: Chunks,
    /// A response: ends with trailers (the status).
    trailers: bool,
    ended: bool,
}

/// A gRPC streaming response of `messages` (each already framed, or the status that ends the
/// call), ended by trailers with the status.
pub fn streaming_response<S>(messages: S) -> http::Response<tonic::body::Body>
where
    S: Stream<Item = Result<Chunks, Status>> + Send + Unpin + 'static,
{
    let body = ChunkedBody { messages, chunks: Chunks::new(), trailers: true, ended: false };
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// The body of a gRPC streaming request of `messages`, each already framed. An error ends the
/// body with that error, which resets the HTTP/2 stream.
pub fn streaming_request<S>(messages: S) -> tonic::body::Body
where
    S: Stream<Item = Result<Chunks, Status>> + Send + Unpin + 'static,
{
    tonic::body::Body::new(ChunkedBody { messages, chunks: Chunks::new(), trailers: false, ended: false })
}

impl<S> hyper::body::Body for ChunkedBody<S>
where
    S: Stream<Item = Result<Chunks, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let me = &mut *self;
        loop {
            if let Some(chunk) = me.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if me.ended {
                return Poll::Ready(None);
            }
            let status = match Pin::new(&mut me.messages).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // An empty message (none is; a bug otherwise) sends nothing.
                Poll::Ready(Some(Ok(chunks))) => {
                    me.chunks = chunks;
                    continue;
                }
                Poll::Ready(Some(Err(status))) => status,
                Poll::Ready(None) => Status::ok(""),
            };
            me.ended = true;
            return Poll::Ready(match (me.trailers, status.code()) {
                (true, _) => Some(Ok(Frame::trailers(trailers(&status)))),
                (false, tonic::Code::Ok) => None,
                (false, _) => Some(Err(status)),
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.chunks.is_empty()
    }
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only a message that cannot be a header value gets here: the code alone then.
        map.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    /// Every frame of a body: data as bytes, trailers as their grpc-status.
    async fn frames(body: tonic::body::Body) -> Vec<Result<Result<Bytes, String>, Status>> {
        let mut body = body;
        let mut out = Vec::new();
        for _ in 0..100 {
            match body.frame().await {
                None => break,
                Some(Ok(f)) => out.push(Ok(match f.into_data() {
                    Ok(data) => Ok(data),
                    Err(f) => Err(f.into_trailers().map_or_else(
                        |_| "neither data nor trailers".to_string(),
                        |t| format!("grpc-status {:?}", t.get("grpc-status")),
                    )),
                })),
                Some(Err(e)) => out.push(Err(e)),
            }
        }
        out
    }

    #[tokio::test]
    async fn a_response_sends_each_chunk_as_it_is_then_the_status() {
        let payload = Bytes::from(vec![7u8; 4096]);
        let mut second = chunks(&[b"head"]);
        second.push_back(payload.clone());
        let messages = futures::stream::iter([Ok(chunks(&[b"a", b"bc"])), Ok(second), Err(Status::not_found("gone"))]);
        let got = frames(streaming_response(messages).into_body()).await;
        let data: Vec<Bytes> = got.iter().filter_map(|f| f.as_ref().ok()?.as_ref().ok().cloned()).collect();
        assert_eq!(data, [&b"a"[..], b"bc", b"head", &payload[..]]);
        assert_eq!(data[3].as_ptr(), payload.as_ptr(), "the payload is the very bytes given");
        let last = got.last().expect("frames").as_ref().expect("no body error");
        assert_eq!(last.as_ref().expect_err("trailers"), &format!("grpc-status {:?}", Some("5")));
        let ok = frames(streaming_response(futures::stream::iter([Ok(chunks(&[b"x"]))])).into_body()).await;
        assert_eq!(ok.len(), 2, "one data frame and the trailers");
        assert!(matches!(&ok[1], Ok(Err(t)) if t.contains("\"0\"")), "{ok:?}");
    }

    #[tokio::test]
    async fn a_request_ends_without_trailers_or_with_its_error() {
        let messages = futures::stream::iter([Ok(chunks(&[b"a"])), Ok(chunks(&[b"b", b"c"]))]);
        let got = frames(streaming_request(messages)).await;
        let data: Vec<Bytes> = got.into_iter().map(|f| f.expect("data").expect("data")).collect();
        assert_eq!(data, [&b"a"[..], b"b", b"c"]);
        let failing = futures::stream::iter([Ok(chunks(&[b"a"])), Err(Status::internal("cannot encode"))]);
        let got = frames(streaming_request(failing)).await;
        assert_eq!(got.len(), 2);
        assert!(got[1].is_err(), "the error ends the body: {got:?}");
    }
}
