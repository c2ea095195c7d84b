//! One span per gRPC call, as a tower layer (not per-handler code): named `{service}/{method}`,
//! kind SERVER, with the `rpc.*` attributes of OpenTelemetry's RPC conventions, the caller's
//! W3C trace context (`traceparent` in the request metadata) as its parent, and the call's
//! gRPC status (ERROR status for anything but OK).
//!
//! Which calls are exported by default (`info`): unary client calls. Streaming calls (Produce,
//! Subscribe, group sessions, commits) get their span at `debug`: a stream's own span says
//! little about latency, so the handlers make a span per batch instead (`api/records.rs`).
//! The brokers' internal traffic (Raft, pings), health checks and reflection are `debug` too,
//! so an idle cluster exports nothing; `RUST_LOG=debug` shows them.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use opentelemetry::propagation::Extractor;
use tonic::codegen::http;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Calls whose span is exported by default: anything but these prefixes and streams.
const QUIET_PREFIXES: &[&str] = &["/tidelog.internal.", "/grpc.health.", "/grpc.reflection."];
const STREAMS: &[&str] = &[
    "/tidelog.v1.RecordService/Produce",
    "/tidelog.v1.RecordService/Subscribe",
    "/tidelog.v1.OffsetService/Commit",
    "/tidelog.v1.GroupService/Session",
];

/// The layer (`Server::builder().layer(GrpcTraceLayer)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcTraceLayer;

impl<S> Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcTrace { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcTrace<S> {
    inner: S,
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn span_for<B>(req: &http::Request<B>) -> tracing::Span {
    let path = req.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let quiet = QUIET_PREFIXES.iter().any(|p| path.starts_with(p)) || STREAMS.contains(&path);
    let name = path.trim_start_matches('/');
    let span = if quiet {
        tracing::debug_span!("grpc", otel.name = %name, otel.kind = "server", rpc.system = "grpc",
            rpc.service = %service, rpc.method = %method, rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty)
    } else {
        tracing::info_span!("grpc", otel.name = %name, otel.kind = "server", rpc.system = "grpc",
            rpc.service = %service, rpc.method = %method, rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty)
    };
    if super::exporting() && !span.is_disabled() {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
        let _ = span.set_parent(parent);
    }
    span
}

impl<S, B, RB> Service<http::Request<B>> for GrpcTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = span_for(&req);
        let call = self.inner.call(req).instrument(span.clone());
        Box::pin(async move {
            let result = call.await;
            if let Ok(resp) = &result {
                // An error is answered "trailers-only": its status is in the headers. A stream
                // that fails later carries it in trailers, after this span ended.
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
                span.record("rpc.grpc.status_code", code);
                if code != 0 {
                    span.record("otel.status_code", "ERROR");
                }
            }
            result
        })
    }
}
