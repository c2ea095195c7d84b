//! Produce calls served without tonic's decode copy: the requests are decoded from the HTTP/2
//! DATA frames they came in (`grpc::requests`), so each batch payload reaches the log as a
//! slice of its frame (the SDKs send each payload of 48 KiB or more as a frame of its own,
//! smaller ones inside the frame of the request's fields); the answers go out
//! framed whole (`grpc::frame_whole`). The mirror of `subscribe_body.rs` on the way in.
//! Before, tonic gathered every frame into one decode buffer: 14 % of the broker's CPU under
//! the Rust SDK producer (`perf`, `StreamingInner::poll_frame`; docs/PERFORMANCE.md).
//!
//! Never: copy a payload here; what the decoder refuses is refused with tonic's codes.

use futures::StreamExt;
use tidelog_proto::wire;
use tonic::codegen::http;

use super::records::RecordApi;
use super::MAX_MESSAGE_BYTES;
use crate::auth::layer::caller;
use crate::grpc;
use crate::grpc::requests::{self, FramedMessages};

/// Serves one Produce call: the requests of `req`'s body to [`RecordApi::produce_stream`],
/// its answers framed back.
pub(super) fn serve(api: &RecordApi, req: http::Request<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let (parts, body) = req.into_parts();
    if let Err(status) = requests::refuse_compressed(&parts.headers) {
        return status.into_http();
    }
    // The caller (set by the auth layer) and the rest of the metadata, as tonic passes them.
    let request = tonic::Request::from_http(http::Request::from_parts(parts, ()));
    let requests = FramedMessages::<wire::ProduceRequest>::new(body, MAX_MESSAGE_BYTES);
    let answers = api.produce_stream(caller(&request), requests);
    grpc::body::streaming_response(answers.map(|a| a.and_then(|answer| grpc::frame_whole(answer, MAX_MESSAGE_BYTES))))
}
