//! Logging, tracing and metrics: `tracing` spans to stderr (filtered by `RUST_LOG`, default
//! [`DEFAULT_FILTER`]: `info`, openraft's own lines from `warn`), and — when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — the same spans exported over
//! OTLP/gRPC via tracing-opentelemetry (Jaeger accepts OTLP on port 4317), with W3C trace
//! context propagation (`grpc_trace.rs` for RPCs, `api/batch_trace.rs` for record headers).
//! Warnings and errors written to stderr are rate-limited per place in the code
//! (`rate_limit.rs`), so a fault cannot fill a disk with one repeated line. Prometheus
//! instruments and the `/metrics` endpoint: `metrics.rs`, `process.rs`, `http.rs`.
//!
//! The standard variables apply: `OTEL_SERVICE_NAME` (default `tidelog`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_*`.
//! The resource also names the broker (`service.instance.id` = its node id).
//!
//! Invariant: with no exporter configured, nothing on the record path builds a span or decodes
//! a record for tracing ([`exporting`] is false); the cost is one relaxed atomic load.

pub mod grpc_trace;
pub mod http;
pub mod metrics;
pub mod process;
mod rate_limit;

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes and stops the exporter when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("tidelog: trace exporter shutdown: {e}");
            }
        }
    }
}

/// Whether spans are exported (an OTLP endpoint is configured).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: per-batch spans and record-header trace contexts are only built
/// then.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Installs the global subscriber. Must run inside a tokio runtime (the exporter needs one).
/// `service_name` applies unless `OTEL_SERVICE_NAME` says otherwise; `instance` (a broker's
/// node id) becomes `service.instance.id`.
pub fn init(service_name: &'static str, instance: Option<String>) -> anyhow::Result<TelemetryGuard> {
    init_with(service_name, instance, DEFAULT_FILTER)
}

/// The broker's filter where `RUST_LOG` is unset. openraft logs every election step, tick
/// and stream at INFO: a cluster creating thousands of partitions wrote ~40,000 such lines a
/// second per broker, and formatting them was a tenth of its CPU. Its warnings stay.
pub const DEFAULT_FILTER: &str = "info,openraft=warn";

/// Resource attributes naming this broker and its cluster, beside `service.instance.id`.
static CLUSTER_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the `tidelog.cluster.id` resource attribute; call before [`init`].
pub fn set_cluster_id(id: String) {
    let _ = CLUSTER_ID.set(id);
}

/// As [`init`], with `default_filter` where `RUST_LOG` is unset (a client says less).
pub fn init_with(
    service_name: &'static str,
    instance: Option<String>,
    default_filter: &str,
) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour only for a person at a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .with_filter(rate_limit::RateLimit::default());
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
            // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
            let mut resource = opentelemetry_sdk::Resource::builder();
            if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.is_empty()) {
                resource = resource.with_service_name(service_name);
            }
            if let Some(id) = instance {
                resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", id));
            }
            if let Some(id) = CLUSTER_ID.get() {
                resource = resource.with_attribute(opentelemetry::KeyValue::new("tidelog.cluster.id", id.clone()));
            }
            Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
        }
        _ => None,
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name)));
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init()?;
    Ok(TelemetryGuard { provider })
}
