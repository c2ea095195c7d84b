//! The `/metrics` endpoint: a small HTTP/1 server (hyper, on the broker's runtime) that
//! encodes a registry in the Prometheus text format on every GET. Anything but `GET /metrics`
//! gets 404. One task per connection; the encoding (which runs the collectors' reads) runs on
//! a blocking thread, so a scrape never stalls the runtime's workers.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `registry` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, Arc::clone(&registry)));
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
        });
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found: GET /metrics\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    }
    // Off the runtime's workers: collectors read the metadata store (sled) synchronously.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).map(|()| body)
    })
    .await;
    let (status, body) = match encoded {
        Ok(Ok(body)) => (StatusCode::OK, body),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {e}\n")),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
    Ok(r)
}
