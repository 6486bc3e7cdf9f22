//! What bounds the webhook port's memory and connections, whatever its clients do.
//!
//! - **Connections**: at most `max_connections` past the accept; one more is closed at once
//!   (counted), never queued. Each costs about 100 KiB at worst (TLS buffers, a 64 KiB HTTP/1.1
//!   read buffer), so the default 512 bounds them to about 50 MiB.
//! - **Request bodies**: a budget of bytes shared by every request in flight, reserved from the
//!   declared `Content-Length` (3 MiB when none is declared) before the body is read, and held
//!   until the answer is written. A request that does not fit is answered 503 at once, so 60
//!   clients each stalling on a 3 MiB body hold the budget (32 MiB by default), not 180 MiB.
//! - **Idle connections**: a connection with no request within the header timeout of its
//!   handshake, or none for the idle timeout since its last one, is closed. HTTP/1.1 already
//!   times out request heads itself; HTTP/2 has nothing of the kind, so a client that sends its
//!   preface and then nothing was held forever.
//!
//! With the defaults, the worst case is about 22 MiB at rest + 50 MiB of connections + 32 MiB
//! of bodies, under the Deployment's 128 MiB limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::MAX_BODY_BYTES;
use crate::metrics::Metrics;

/// Bytes of request bodies that may be in memory at once, across all connections.
#[derive(Clone)]
pub(super) struct BodyBudget {
    bytes: Arc<Semaphore>,
    metrics: Metrics,
}

impl BodyBudget {
    pub(super) fn new(bytes: usize, metrics: Metrics) -> Self {
        BodyBudget { bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))), metrics }
    }
}

/// Middleware: reserves a request's body size from the budget before the body is read.
pub(super) async fn reserve_body(State(budget): State<BodyBudget>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let size = match declared {
        Some(length) if length > MAX_BODY_BYTES as u64 => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 3 MiB\n").into_response();
        }
        Some(length) => length as u32,
        // Chunked or undeclared: it may be as large as any body can be.
        None => MAX_BODY_BYTES as u32,
    };
    let Ok(_reservation) = budget.bytes.try_acquire_many(size) else {
        budget.metrics.requests_shed.inc();
        let retry = [(header::RETRY_AFTER, HeaderValue::from_static("1"))];
        return (StatusCode::SERVICE_UNAVAILABLE, retry, "registry-gate is busy reading other requests\n")
            .into_response();
    };
    next.run(request).await
}

/// What one connection is doing, shared by its service (which counts requests) and its
/// watchdog (which closes it when idle).
pub(super) struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `opened` when a request last started or ended.
    last_change_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_change_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_change_ms.store(now, Ordering::Relaxed);
    }

    /// A request started; the returned guard ends it when dropped.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// When the connection is to be closed if nothing happens before: `first_request` after
    /// the handshake until a first request, `idle` after the last request ended. `None` while a
    /// request is in flight.
    pub(super) fn deadline(&self, first_request: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.opened + first_request);
        }
        Some(self.opened + Duration::from_millis(self.last_change_ms.load(Ordering::Relaxed)) + idle)
    }

    pub(super) fn has_served(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }
}

/// A request in flight on a connection.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection's service, counting its requests for the idle watchdog.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: hyper::Request<B>) -> Self::Future {
        let in_flight = self.activity.begin();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(in_flight);
            answer
        })
    }
}

/// Waits until the connection has been idle past its deadline; never returns while requests
/// are in flight. Polls no more often than the deadlines move.
pub(super) async fn idle(activity: &Activity, first_request: Duration, idle: Duration) {
    loop {
        match activity.deadline(first_request, idle) {
            Some(deadline) if Instant::now() >= deadline => return,
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            // A request is in flight; its own timeout bounds it. Look again shortly after.
            None => tokio::time::sleep(first_request.min(idle)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_after_its_deadlines_and_never_mid_request() {
        let (first, idle_after) = (Duration::from_secs(5), Duration::from_secs(60));
        let activity = Activity::new();
        let opened = Instant::now();
        idle(&activity, first, idle_after).await;
        assert_eq!(Instant::now() - opened, first, "no request: closed after the first-request timeout");

        let activity = Activity::new();
        let request = activity.begin();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { idle(&activity, first, idle_after).await }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!waiting.is_finished(), "a request in flight keeps the connection");
        drop(request);
        let ended = Instant::now();
        waiting.await.expect("watchdog");
        let waited = Instant::now() - ended;
        assert!(waited >= idle_after && waited < idle_after + first, "{waited:?}");
    }
}
