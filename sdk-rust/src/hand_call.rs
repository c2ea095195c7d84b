//! The start of a streaming call the SDK makes by hand, for the two calls whose bodies it
//! frames itself: Produce (requests sent without an encode buffer, `producer/produce_body.rs`)
//! and Subscribe (responses decoded from their frames, `consumer/subscribe_call.rs`).
//!
//! Everything but the bodies is what tonic's generated client does: the same channel and
//! credentials interceptor, the same request headers, and the same reading of the response's
//! headers, where a "trailers-only" answer carries the call's status.
//!
//! Never: buffer or copy a body here.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use tidelog_proto::frames::PREFIX_LEN;
use tonic::client::GrpcService;
use tonic::codegen::http;
use tonic::Status;

use crate::client::Channel;
use crate::Error;

/// The gRPC frame of one whole message: its prefix (not compressed, the length) and its
/// protobuf encoding. `what` names the message in an error.
pub(crate) fn frame_message(message: &impl Message, what: &str) -> Result<Bytes, Error> {
    let len = message.encoded_len();
    let prefix_len = u32::try_from(len).map_err(|_| Error::InvalidArgument(format!("{what} over 4 GiB")))?;
    let mut framed = BytesMut::with_capacity(PREFIX_LEN + len);
    framed.put_u8(0); // not compressed
    framed.put_u32(prefix_len);
    message.encode(&mut framed).map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
    Ok(framed.freeze())
}

/// Calls `path` on `channel` with `body` as the request body, and waits for the response's
/// headers. A status other than OK in them (a trailers-only answer) is the call's error; an OK
/// one there means the response has ended already (`grpc-status` is then among its headers).
pub(crate) async fn start(
    mut channel: Channel,
    path: &'static str,
    body: tonic::body::Body,
) -> Result<http::Response<tonic::body::Body>, Error> {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(path)
        .header(http::header::TE, "trailers")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .map_err(|e| Error::InvalidArgument(format!("{path}: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| Status::from_error(e.into()))?;
    let response = channel.call(request).await.map_err(|e| Status::from_error(e.into()))?;
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            return Err(status.into());
        }
    }
    Ok(response.map(tonic::body::Body::new))
}

/// Whether `response` is a trailers-only answer: its status came in its headers, and it has
/// no messages.
pub(crate) fn ended_in_headers<B>(response: &http::Response<B>) -> bool {
    response.headers().contains_key("grpc-status")
}
