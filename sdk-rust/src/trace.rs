//! Tracing records across services (OpenTelemetry messaging conventions, W3C trace context),
//! on `tracing` + `tracing-opentelemetry`: what the application installs decides whether and
//! where spans go. Producers make their per-record span only while a trace-context propagator
//! is installed (`opentelemetry::global::set_text_map_propagator`, which every application that
//! traces sets: without one no context could travel in a record); otherwise a send costs one
//! read of the global propagator, whatever `tracing` subscriber is installed, and adds no
//! header.
//!
//! - Producing: every `send` runs in a `send {topic}` span (kind PRODUCER) whose context is
//!   put on the record as `traceparent` (and `tracestate`) headers, unless the record carries a
//!   `traceparent` already.
//! - Consuming: [`process_span`] starts a `process {topic}` span (kind CONSUMER) whose parent
//!   is the record's producer context: enter it while handling the record and the consumer's
//!   own spans join the producer's trace. [`record_context`] gives the context itself.

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{ConsumedRecord, Record};

/// The record header holding the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The record header holding the W3C trace state.
pub const TRACESTATE: &str = "tracestate";

struct HeaderReader<'a>(&'a [(String, Bytes)]);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct HeaderWriter<'a>(&'a mut Vec<(String, Bytes)>);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.push((key.to_string(), Bytes::from(value)));
        }
    }
}

/// The `send {topic}` span of one record, and the record with its trace headers added (when
/// the span is recorded by an OpenTelemetry layer and the record has none).
pub(crate) fn send_span(topic: &str, partition: Option<u32>, mut record: Record) -> (Record, tracing::Span) {
    if !propagating() {
        return (record, tracing::Span::none());
    }
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        messaging.system = "tidelog",
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.message.body.size = record.value.as_ref().map_or(0, |v| v.len() as i64),
    );
    if span.is_disabled() {
        return (record, span);
    }
    if let Some(p) = partition {
        span.record("messaging.destination.partition.id", p.to_string());
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() && !record.headers.iter().any(|(k, _)| k == TRACEPARENT) {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderWriter(&mut record.headers))
        });
    }
    (record, span)
}

/// Whether a propagator that carries trace context is installed (the no-op default has no
/// fields).
fn propagating() -> bool {
    opentelemetry::global::get_text_map_propagator(|p| p.fields().next().is_some())
}

/// The producer's trace context carried by a consumed record (empty if it carries none).
pub fn record_context(record: &ConsumedRecord) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderReader(&record.headers)))
}

/// A `process {topic}` span (kind CONSUMER) for handling `record`, child of the record's
/// producer span, so what the consumer does inside it joins the producer's trace.
///
/// ```no_run
/// # async fn f(mut consumer: tidelog::GroupConsumer) {
/// use tracing::Instrument;
/// while let Some(Ok(record)) = consumer.next().await {
///     let span = tidelog::trace::process_span(&record, Some("billing"));
///     async { /* handle the record; spans created here are in the producer's trace */ }
///         .instrument(span)
///         .await;
/// }
/// # }
/// ```
pub fn process_span(record: &ConsumedRecord, group: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {}", record.topic),
        otel.kind = "consumer",
        messaging.system = "tidelog",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %record.topic,
        messaging.destination.partition.id = %record.partition,
        messaging.tidelog.message.offset = record.offset as i64,
        messaging.consumer.group.name = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(g) = group {
        span.record("messaging.consumer.group.name", g);
    }
    if record.headers.iter().any(|(k, _)| k == TRACEPARENT) {
        let _ = span.set_parent(record_context(record));
    }
    span
}
