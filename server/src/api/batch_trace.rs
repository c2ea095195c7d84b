//! Trace context carried in produced records: the W3C `traceparent` (and `tracestate`) record
//! headers that producers put on each record, read back by the broker to tie its per-batch
//! `append` span to the producers' spans (the first context found is the span's parent, the
//! other distinct ones are its links), and the span itself.
//!
//! Cost: only while spans are exported (`telemetry::exporting`): the batch is then decoded once
//! more (a compressed one decompressed first), which is the price of tracing every record.
//! Without an exporter this module is never reached: the broker stores and serves the
//! producer's bytes without decoding them.

use bytes::Bytes;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use prost::Message;
use tidelog_proto::v1::RecordBatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::partition::batch::{decompress, CODEC_NONE};

/// Most links one append span carries (a batch of records from many traces).
const MAX_LINKS: usize = 32;

struct RecordHeaders<'a>(&'a [tidelog_proto::v1::Header]);

impl Extractor for RecordHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|h| h.key == key).and_then(|h| std::str::from_utf8(&h.value).ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key.as_str()).collect()
    }
}

/// The distinct producer span contexts in a batch's records, in record order (at most
/// `MAX_LINKS + 1`). A batch that does not decode has none (it is refused elsewhere).
pub fn producer_contexts(payload: &Bytes, codec: u8) -> Vec<SpanContext> {
    let records = if codec == CODEC_NONE { Ok(payload.clone()) } else { decompress(codec, payload) };
    let Ok(batch) = records.map(RecordBatch::decode) else { return Vec::new() };
    let Ok(batch) = batch else { return Vec::new() };
    let mut out: Vec<SpanContext> = Vec::new();
    for r in &batch.records {
        if !r.headers.iter().any(|h| h.key == "traceparent") {
            continue;
        }
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&RecordHeaders(&r.headers)));
        let sc = cx.span().span_context().clone();
        if sc.is_valid() && !out.iter().any(|o| o.span_id() == sc.span_id() && o.trace_id() == sc.trace_id()) {
            out.push(sc);
            if out.len() > MAX_LINKS {
                break;
            }
        }
    }
    out
}

/// The span of one produced batch (see the module docs), or a disabled span when spans are not
/// exported.
pub fn append_span(topic: &str, partition: u32, records: u32, payload: Option<(&Bytes, u8)>) -> tracing::Span {
    if !crate::telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "append",
        otel.name = %format!("append {topic}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "tidelog.v1.RecordService",
        rpc.method = "Produce",
        messaging.system = "tidelog",
        messaging.operation.name = "append",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = %partition,
        messaging.batch.message_count = i64::from(records),
        messaging.message.body.size = payload.map_or(0, |(p, _)| p.len() as i64),
        messaging.tidelog.batch.base_offset = tracing::field::Empty,
    );
    if let Some((payload, codec)) = payload {
        let mut contexts = producer_contexts(payload, codec).into_iter();
        if let Some(first) = contexts.next() {
            let parent = opentelemetry::Context::new().with_remote_span_context(first);
            let _ = span.set_parent(parent);
        }
        for sc in contexts {
            span.add_link(sc);
        }
    }
    span
}
