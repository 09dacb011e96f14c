//! The gateway's connections: how many may be open, how long a client may take to send a
//! request's head, how large the head may be, and how often a client without a known key
//! may ask. Every refusal here is answered in the gateway's one JSON error form, as are the
//! answers the HTTP stack gives with a body of its own (a path it cannot decode, say).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::api_error::ApiError;
use super::bare_errors::JsonErrors;
use super::{routes, Gateway};
use crate::ports::{Balances, Publisher};

/// What the gateway's connections may do (`[gateway]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// For a request's head to arrive, and for an idle keep-alive connection.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// The request target and every header; the target alone may take half.
    pub max_header_bytes: usize,
}

/// The largest request head read before it is refused (in the JSON form when over
/// `max_header_bytes`).
const HEAD_BUFFER_BYTES: usize = 256 * 1024;

/// The route label of requests refused before routing.
const PREFLIGHT: &str = "preflight";

/// Serves `gateway` on `listener` (over TLS with `tls`) until `shutdown` turns true, then
/// lets the requests in flight finish (for at most `drain`).
pub async fn serve<P: Publisher + 'static, S: Balances>(
    listener: TcpListener,
    gateway: Arc<Gateway<P, S>>,
    (limits, tls): (ConnectionLimits, Option<TlsAcceptor>),
    drain: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = routes(gateway.clone());
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Heads up to this size are read and refused in JSON; beyond it hyper answers 431
        // itself, without a body. A connection's buffer grows only as its head does.
        .max_buf_size((limits.max_header_bytes * 4).max(HEAD_BUFFER_BYTES))
        // One contiguous write per answer, so that hyper's own error answers are seen whole.
        .writev(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most often: wait for some to close.
                    tracing::warn!("accepting a gateway connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Some(metrics) = &gateway.metrics {
                metrics.connections_refused.inc();
            }
            tokio::spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let (gateway, router) = (gateway.clone(), router.clone());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (gateway, router) = (gateway.clone(), router.clone());
            async move { Ok::<_, Infallible>(preflight(&gateway, router, limits, peer, request).await) }
        });
        let (http, watcher, tls) = (http.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            // A client that hangs up, times out or fails its handshake is its own business.
            match tls {
                None => {
                    let io = TokioIo::new(JsonErrors::new(stream));
                    let _ = watcher.watch(http.serve_connection(io, service)).await;
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(limits.header_read_timeout, handshake).await
                    {
                        let io = TokioIo::new(JsonErrors::new(stream));
                        let _ = watcher.watch(http.serve_connection(io, service)).await;
                    }
                }
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway: requests still open after {drain:?} of shutdown were cut");
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_connections",
        format!("the gateway has {max} connections open (gateway.max_connections); try again"),
    )
    .body()
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// What is checked before a request is routed, then the route's answer in the JSON error
/// form.
async fn preflight<P: Publisher + 'static, S: Balances>(
    gateway: &Gateway<P, S>,
    router: Router,
    limits: ConnectionLimits,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response {
    let started = Instant::now();
    if let Err(refused) = head_fits(&request, limits.max_header_bytes)
        .and_then(|()| anonymous_within_limit(gateway, request.headers(), peer))
    {
        if let Some(metrics) = &gateway.metrics {
            let status = refused.status;
            metrics
                .requests
                .with_label_values(&[PREFLIGHT, status.as_str()])
                .inc();
            metrics
                .seconds
                .with_label_values(&[PREFLIGHT])
                .observe(started.elapsed().as_secs_f64());
        }
        return refused.into_response();
    }
    let response = match router.oneshot(request.map(Body::new)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    in_error_form(response).await
}

/// A head within the limit.
fn head_fits<B>(request: &Request<B>, max: usize) -> Result<(), ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > max / 2 {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {target} bytes, at most {} are read (half of gateway.max_header_bytes)",
                max / 2
            ),
        ));
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if target + headers > max {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request's head is {} bytes, at most {max} are read (gateway.max_header_bytes)",
                target + headers
            ),
        ));
    }
    Ok(())
}

/// A request without a known key spends its client address's budget, so that guessing keys
/// or calling without one cannot wear the gateway down.
fn anonymous_within_limit<P: Publisher, S: Balances>(
    gateway: &Gateway<P, S>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    if gateway.keys.identify(headers).is_ok() {
        return Ok(());
    }
    gateway
        .anonymous_limit
        .check(&peer.ip().to_string())
        .map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many requests without a known API key from {}; wait {wait:?}",
                    peer.ip()
                ),
            )
            .retry_after(wait)
        })
}

/// `response`, with an error answer the HTTP stack wrote in another form (plain text)
/// rewritten into the gateway's JSON error body.
async fn in_error_form(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 4096).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    ApiError::from_status(status, text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_head_over_the_limit_is_refused_with_its_status() {
        assert!(head_fits(&request("/v1/events", &[("a", "b")]), 1024).is_ok());
        let long_target = format!("/v1/accounts/{}", "a".repeat(600));
        assert_eq!(
            head_fits(&request(&long_target, &[]), 1024)
                .unwrap_err()
                .status,
            StatusCode::URI_TOO_LONG
        );
        let big = "x".repeat(1100);
        assert_eq!(
            head_fits(&request("/v1/events", &[("traceparent", &big)]), 1024)
                .unwrap_err()
                .status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn plain_text_errors_are_rewritten_into_the_json_form() {
        let plain = (StatusCode::BAD_REQUEST, "Invalid URL: bad percent-encoding").into_response();
        let rewritten = in_error_form(plain).await;
        assert_eq!(rewritten.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(rewritten.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
        assert_eq!(
            body["error"]["message"],
            "Invalid URL: bad percent-encoding"
        );
        let fine = in_error_form((StatusCode::OK, "hello").into_response()).await;
        assert_eq!(fine.status(), StatusCode::OK);
    }
}
