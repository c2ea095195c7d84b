//! The Subscribe call made by hand, so its responses are decoded from the HTTP/2 DATA frames
//! as they came (`tidelog_proto::frames`, the decoder the broker reads Produce and
//! replication with) instead of through tonic's `Streaming`, which gathers every frame into
//! one decode buffer first: a copy of every consumed byte, 17.5 % of an SDK subscriber's CPU
//! (docs/PERFORMANCE.md, "Consume: the subscriber's receive window"). The broker sends each
//! stored batch payload of 48 KiB or more as a DATA frame of its own and smaller ones inside
//! the frames around them (`frames::INLINE_PAYLOAD_BELOW`), so a batch's payload is a slice of
//! the frame it came in (copied only when it straddles two), and the records' values slices
//! of that.
//!
//! The call starts as every hand-made call does (`hand_call`: the same channel, credentials
//! and headers as tonic's generated client). Errors are what that client would give: a status
//! in the response's headers (trailers-only) or in its trailers.
//!
//! Never: copy a batch payload here.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tidelog_proto::frames::FramedMessages;
use tidelog_proto::wire;
use tonic::Status;

use crate::client::Channel;
use crate::{hand_call, Error};

const SUBSCRIBE_PATH: &str = "/tidelog.v1.RecordService/Subscribe";

/// The responses of one Subscribe call, each decoded as it completes.
pub(crate) type Responses = FramedMessages<wire::SubscribeResponse>;

/// Opens a Subscribe stream on `channel` for `request`; responses of at most
/// `max_response_bytes` each.
pub(crate) async fn open(
    channel: Channel,
    request: &wire::SubscribeRequest,
    max_response_bytes: usize,
) -> Result<Responses, Error> {
    let framed = hand_call::frame_message(request, "subscribe request")?;
    let body = tonic::body::Body::new(Once(Some(framed)));
    // A trailers-only OK answer has an empty body: its messages end at once, quietly.
    let response = hand_call::start(channel, SUBSCRIBE_PATH, body).await?;
    Ok(FramedMessages::new(response.into_body(), max_response_bytes).response())
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
