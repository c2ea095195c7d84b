//! The Subscribe call made by hand, so its responses are decoded from the HTTP/2 DATA frames
//! as they came (`tidelog_proto::frames`, the decoder the broker reads Produce and
//! replication with) instead of through tonic's `Streaming`, which gathers every frame into
//! one decode buffer first: a copy of every consumed byte, 17.5 % of an SDK subscriber's CPU
//! (docs/PERFORMANCE.md, "Consume: the subscriber's receive window"). The broker sends each
//! stored batch payload as a DATA frame of its own, so a batch's payload is a slice of the
//! frame it came in, and the records' values slices of that.
//!
//! The call goes through the same channel as every other call, with the same credentials
//! interceptor; only the request's framing and the response's first steps (which tonic's
//! `Grpc::server_streaming` would take) are here. Errors are what tonic's generated client
//! would give: a status in the response's headers (trailers-only) or in its trailers.
//!
//! Never: copy a batch payload here.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use tidelog_proto::frames::{FramedMessages, PREFIX_LEN};
use tidelog_proto::wire;
use tonic::client::GrpcService;
use tonic::codegen::http;
use tonic::Status;

use crate::client::Channel;
use crate::Error;

const SUBSCRIBE_PATH: &str = "/tidelog.v1.RecordService/Subscribe";

/// The responses of one Subscribe call, each decoded as it completes.
pub(crate) type Responses = FramedMessages<wire::SubscribeResponse>;

/// Opens a Subscribe stream on `channel` for `request`; responses of at most
/// `max_response_bytes` each.
pub(crate) async fn open(
    mut channel: Channel,
    request: &wire::SubscribeRequest,
    max_response_bytes: usize,
) -> Result<Responses, Error> {
    let len = request.encoded_len();
    let mut framed = BytesMut::with_capacity(PREFIX_LEN + len);
    framed.put_u8(0); // not compressed
    framed.put_u32(u32::try_from(len).map_err(|_| Error::InvalidArgument("subscribe request over 4 GiB".into()))?);
    request.encode(&mut framed).map_err(|e| Error::InvalidArgument(format!("subscribe request: {e}")))?;
    let http_request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri(SUBSCRIBE_PATH)
        .header(http::header::TE, "trailers")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::Body::new(Once(Some(framed.freeze()))))
        .map_err(|e| Error::InvalidArgument(format!("subscribe request: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| Status::from_error(e.into()))?;
    let response = channel.call(http_request).await.map_err(|e| Status::from_error(e.into()))?;
    // As tonic's client does: a "trailers-only" answer carries an error status in its headers.
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            return Err(status.into());
        }
    }
    let body = tonic::body::Body::new(response.into_body());
    Ok(FramedMessages::new(body, max_response_bytes).response())
}

/// A request body of one chunk: the framed SubscribeRequest.
struct Once(Option<Bytes>);

impl http_body::Body for Once {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}
