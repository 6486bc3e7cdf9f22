//! The HTTPS webhook server and the plain-HTTP operations server.
//!
//! - Webhook port (HTTPS only, HTTP/2 and HTTP/1.1 by ALPN): `POST /validate`, `POST /mutate`,
//!   and `POST /validate-policy` for edits of the policy ConfigMap.
//! - Operations port (HTTP): `GET /metrics`, `/healthz`, `/readyz` (ready only while a policy is
//!   in force).
//!
//! Each connection's TLS handshake runs in its own task under a timeout, never in the accept
//! loop, so a stalled client holds up nobody. Slow request headers and slow requests time out.
//! Connections, request bodies in memory and idle connections are bounded ([`limits`]). On
//! shutdown the listeners close and in-flight requests finish.

mod limits;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower_http::timeout::TimeoutLayer;

use crate::admission::review::{Request, ReviewError};
use crate::admission::{self, Webhook};
use crate::metrics::Metrics;
use crate::namespaces::NamespaceLabels;
use crate::policy::PolicyStore;
use crate::policy::in_use::{Impact, InUseFeed, newly_refused};
use tls::{CertificateFiles, ReloadingCertificate, TlsError};

/// The API server sends at most 3 MiB (an UPDATE carries the object twice); a larger body is
/// refused with 413 before it is buffered.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How the server listens and times out.
#[derive(Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub tls: CertificateFiles,
    /// The longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// The longest a client may take to send request headers.
    pub header_timeout: Duration,
    /// The longest a whole request may take (the API server's own webhook timeout is 10 s at most).
    pub request_timeout: Duration,
    /// How often the certificate files are checked for a rotation.
    pub certificate_poll: Duration,
    /// The longest in-flight requests may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// How long open connections keep being served after a shutdown signal, every answer saying
    /// `Connection: close`, before the drain. Closing an idle keep-alive connection at once lost
    /// requests its client had already written into it (the load generator's churn run saw 77
    /// in 50 trials), and the API server does not retry a POST lost that way.
    pub shutdown_grace: Duration,
    /// Connections open at once; one more is closed at once.
    pub max_connections: usize,
    /// How long a connection may go without a request before it is closed. The API server's
    /// own HTTP client drops idle connections after 90 s.
    pub idle_timeout: Duration,
    /// Bytes of request bodies in memory at once; a request that does not fit gets 503.
    pub body_budget_bytes: usize,
    /// Bytes of request bodies one client (peer IP address) may hold at once; a request over
    /// it gets 503 while others are still served. `None`: a quarter of `body_budget_bytes`,
    /// and at least one largest body plus 1 MiB. Never less than one largest body (3 MiB).
    pub body_budget_per_client_bytes: Option<usize>,
    /// Where policy edits that weaken enforcement are recorded as Events naming their author;
    /// none without a cluster (a policy file needs no door).
    pub policy_events: Option<kube::Client>,
    /// Namespace labels, for registries scoped by a `namespaceSelector`; unwatched without a
    /// cluster (such registries then admit nothing).
    pub namespaces: NamespaceLabels,
    /// The audit's inventory of images in use, for warnings on policy edits that would refuse
    /// them; empty without a cluster.
    pub in_use: InUseFeed,
}

impl ServeOptions {
    pub fn new(listen: SocketAddr, metrics_listen: SocketAddr, tls: CertificateFiles) -> Self {
        ServeOptions {
            listen,
            metrics_listen,
            tls,
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            certificate_poll: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(25),
            shutdown_grace: Duration::from_secs(2),
            max_connections: 512,
            idle_timeout: Duration::from_secs(120),
            body_budget_bytes: 32 * 1024 * 1024,
            body_budget_per_client_bytes: None,
            policy_events: None,
            namespaces: NamespaceLabels::unwatched(),
            in_use: InUseFeed::default(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot build the TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    /// A task the server needs stopped; the server stopped with it.
    #[error("{0}")]
    Background(String),
}

/// A server bound to its ports, ready to run.
pub struct Server {
    webhook: TcpListener,
    operations: TcpListener,
    certificate: Arc<ReloadingCertificate>,
    acceptor: TlsAcceptor,
    store: Arc<PolicyStore>,
    options: ServeOptions,
}

impl Server {
    /// Loads the certificate and binds both ports (port 0 picks a free one).
    pub async fn bind(options: ServeOptions, store: Arc<PolicyStore>) -> Result<Self, ServeError> {
        let certificate =
            ReloadingCertificate::new(options.tls.clone(), store.metrics().tls_certificate_expiry.clone())?;
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(certificate.clone())?));
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
        };
        let webhook = bind(options.listen).await?;
        let operations = bind(options.metrics_listen).await?;
        Ok(Server { webhook, operations, certificate, acceptor, store, options })
    }

    /// The webhook port's address.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook.local_addr().unwrap_or(self.options.listen)
    }

    /// The operations port's address.
    pub fn operations_addr(&self) -> SocketAddr {
        self.operations.local_addr().unwrap_or(self.options.metrics_listen)
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    ///
    /// The certificate reloader runs beside the server; should it ever stop (it loops until
    /// aborted, so only a panic stops it), the server shuts down and this returns the error
    /// rather than go on serving a certificate that no longer rotates.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let reloader = tokio::spawn(self.certificate.clone().watch(self.options.certificate_poll));
        let reloader_abort = reloader.abort_handle();
        let stopped = tokio::spawn(async move {
            let failure = tokio::select! {
                () = shutdown => None,
                ended = reloader => Some(match ended {
                    Err(e) if e.is_panic() => "the certificate reloader panicked".to_owned(),
                    _ => "the certificate reloader stopped".to_owned(),
                }),
            };
            if let Some(why) = &failure {
                tracing::error!(target: "registry_gate::server", reason = %why, "shutting down");
            }
            let _ = stop_tx.send(true);
            failure
        });
        let readiness = Readiness { store: self.store.clone(), namespaces: self.options.namespaces.clone() };
        let operations = tokio::spawn(serve_operations(self.operations, readiness, stop_rx.clone()));
        let metrics = self.store.metrics().clone();
        let budget = limits::BodyBudget::new(
            self.options.body_budget_bytes,
            self.options.body_budget_per_client_bytes,
            metrics.clone(),
        );
        let state = Arc::new(WebhookState {
            store: self.store,
            namespaces: self.options.namespaces.clone(),
            policy_events: self.options.policy_events.clone().map(crate::policy::source::recorder),
            in_use: self.options.in_use.clone(),
        });
        let closing = Arc::new(AtomicBool::new(false));
        let webhook = webhook_router(state, self.options.request_timeout);
        let connections = Connections { budget, metrics, closing };
        serve_webhook(self.webhook, self.acceptor, webhook, &self.options, connections, stop_rx).await;
        let _ = operations.await;
        reloader_abort.abort();
        match stopped.await {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(ServeError::Background(why)),
            Err(_) => Err(ServeError::Background("the shutdown watcher panicked".to_owned())),
        }
    }
}

/// What the webhook's handlers share.
struct WebhookState {
    store: Arc<PolicyStore>,
    namespaces: NamespaceLabels,
    policy_events: Option<kube::runtime::events::Recorder>,
    in_use: InUseFeed,
}

/// The webhook's routes. The body budget and `Connection: close` while stopping are applied
/// before the router, by each connection's service ([`limits::Tracked`]).
fn webhook_router(state: Arc<WebhookState>, request_timeout: Duration) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .route("/validate-policy", post(validate_policy))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, request_timeout))
        .with_state(state)
}

/// HTTP/1.1 and HTTP/2 connection settings, each bounded; the protocol is chosen by ALPN.
fn connection_builders(options: &ServeOptions) -> (Builder<TokioExecutor>, Builder<TokioExecutor>) {
    let mut http1 = Builder::new(TokioExecutor::new()).http1_only();
    http1
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .keep_alive(true)
        // Request heads up to 64 KiB (the API server sends about 1 KiB); the default allows
        // about 400 KiB per connection.
        .max_buf_size(64 * 1024);
    let mut http2 = Builder::new(TokioExecutor::new()).http2_only();
    http2
        .http2()
        .timer(TokioTimer::new())
        // Streams and flow-control windows bound what one connection can make the server hold
        // before the body budget is consulted; resets of streams the client opened and then
        // abandoned (rapid reset) are capped by h2's own defaults.
        .max_concurrent_streams(32)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(512 * 1024)
        .max_header_list_size(64 * 1024);
    (http1, http2)
}

/// What the webhook's accept loop shares with its connections.
struct Connections {
    /// Each connection registers its client (peer address) for its share of the body budget.
    budget: limits::BodyBudget,
    metrics: Metrics,
    closing: Arc<AtomicBool>,
}

async fn serve_webhook(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    options: &ServeOptions,
    connections: Connections,
    mut stop: watch::Receiver<bool>,
) {
    let Connections { budget, metrics, closing } = connections;
    let graceful = GracefulShutdown::new();
    let (http1, http2) = connection_builders(options);
    let connection_slots = Arc::new(Semaphore::new(options.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(target: "registry_gate::server", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(slot) = connection_slots.clone().try_acquire_owned() else {
            // Refused, not queued: dropping the stream closes it.
            metrics.connections_closed.with_label_values(&["limit"]).inc();
            continue;
        };
        // Answers are small writes; without this, Nagle's algorithm can hold one back until the
        // client's delayed ACK, about 40 ms (seen on new connections under the load generator).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(target: "registry_gate::server", %peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let (http1, http2) = (http1.clone(), http2.clone());
        let router = router.clone();
        let watcher = graceful.watcher();
        let (metrics, budget, closing) = (metrics.clone(), budget.clone(), closing.clone());
        let (handshake_timeout, first_request_timeout, idle_timeout) =
            (options.handshake_timeout, options.header_timeout, options.idle_timeout);
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(target: "registry_gate::server", %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(target: "registry_gate::server", %peer, "TLS handshake timed out");
                    return;
                }
            };
            let (builder, protocol) = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                (http2, "h2")
            } else {
                (http1, "http/1.1")
            };
            metrics.connections_opened.with_label_values(&[protocol]).inc();
            let activity = limits::Activity::new(closing);
            // The peer address of the accepted TCP connection, not anything the client says.
            let client = budget.client(peer.ip());
            let service = limits::Tracked {
                inner: TowerToHyperService::new(router),
                activity: activity.clone(),
                client: client.bodies(),
                budget,
            };
            let connection =
                watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            metrics.connections_open.inc();
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        tracing::debug!(target: "registry_gate::server", %peer, error = %e, "connection ended with an error");
                    }
                }
                // Dropping the connection closes it; the watchdog only fires with no request in flight.
                () = limits::idle(&activity, first_request_timeout, idle_timeout) => {
                    let reason = if activity.has_served() { "idle" } else { "no-request" };
                    metrics.connections_closed.with_label_values(&[reason]).inc();
                    tracing::debug!(target: "registry_gate::server", %peer, reason, "closing connection");
                }
            }
            metrics.connections_open.dec();
        });
    }
    drop(listener);
    if !options.shutdown_grace.is_zero() {
        tracing::info!(target: "registry_gate::server", grace = ?options.shutdown_grace, "shutting down: answering open connections with Connection: close");
        closing.store(true, Ordering::Relaxed);
        tokio::time::sleep(options.shutdown_grace).await;
    }
    tracing::info!(target: "registry_gate::server", "shutting down: draining in-flight requests");
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(target: "registry_gate::server", "drain timed out; closing the remaining connections");
    }
}

/// What `/readyz` waits for: a policy, and the namespace labels when they are watched.
#[derive(Clone)]
struct Readiness {
    store: Arc<PolicyStore>,
    namespaces: NamespaceLabels,
}

async fn serve_operations(listener: TcpListener, readiness: Readiness, mut stop: watch::Receiver<bool>) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(readiness);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
        tracing::error!(target: "registry_gate::server", error = %e, "operations server failed");
    }
}

async fn metrics(State(Readiness { store, .. }): State<Readiness>) -> Response {
    // The audit log's rate limit counts in a static of its own (it has no metrics to hand).
    let suppressed = &store.metrics().audit_lines_suppressed;
    suppressed.inc_by(admission::audit::AUDIT_LINES.suppressed_total().saturating_sub(suppressed.get()));
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4");
    ([(header::CONTENT_TYPE, content_type)], store.metrics().render()).into_response()
}

async fn ready(State(Readiness { store, namespaces }): State<Readiness>) -> Response {
    match store.current() {
        Some(_) if !namespaces.is_ready() => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: namespace labels not loaded yet\n").into_response()
        }
        Some(snapshot) => {
            format!("ready: policy generation {} from {}\n", snapshot.generation, snapshot.source)
                .into_response()
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no valid policy loaded yet\n").into_response(),
    }
}

async fn validate(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    review(&state.store, &state.namespaces, Webhook::Validate, &body)
}

async fn mutate(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    review(&state.store, &state.namespaces, Webhook::Mutate, &body)
}

/// Reviews of the policy ConfigMap need no policy in force: they are how a first one arrives.
async fn validate_policy(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let metrics = state.store.metrics();
    let request = match Request::parse(&body) {
        Ok(request) => request,
        // This webhook fails open (failurePolicy: Ignore, so an admin can always repair the
        // policy), so a 400 would admit the edit: an unreadable object is denied instead.
        Err(ReviewError::UnreadableObject { uid, kind, name, detail, .. }) => {
            let answer = admission::unreadable(&uid, &kind, &name, &detail);
            metrics.requests.inc("unknown", "ConfigMap", answer.outcome.label());
            return json_response(answer.response.to_review_json());
        }
        Err(e) => return malformed(metrics, &e),
    };
    let in_use = state.in_use.current();
    let impact = |old: Option<&crate::policy::Policy>, new: &crate::policy::Policy| {
        let inventory = in_use.as_deref()?;
        // One cache lookup per namespace, not per image.
        let entries: std::collections::HashMap<&str, _> = inventory
            .images
            .iter()
            .filter_map(|i| Some((i.namespace.as_str(), state.namespaces.get(&i.namespace)?)))
            .collect();
        let labels = |name: &str| entries.get(name).map(|entry| entry.labels());
        Impact::of(&newly_refused(old, new, inventory, labels)).warning(inventory)
    };
    let review = admission::answer_policy_review(&request, impact);
    metrics.requests.inc(operation_label(request.operation()), "ConfigMap", review.answer.outcome.label());
    // The Event is a side effect, so never for a dry run (the webhook says NoneOnDryRun), and
    // it does not hold up the answer.
    if let (false, Some(recorder)) =
        (review.weakened.is_empty() || request.is_dry_run(), &state.policy_events)
    {
        let (recorder, weakened) = (recorder.clone(), review.weakened);
        let (namespace, name, user) =
            (request.namespace().to_owned(), request.name().to_owned(), request.username().to_owned());
        tokio::spawn(async move {
            crate::policy::source::record_weakening(&recorder, &namespace, &name, &user, &weakened).await;
        });
    }
    json_response(review.answer.response.to_review_json())
}

/// The operation as a bounded metric label: anything unexpected is `other`.
fn operation_label(operation: &str) -> &'static str {
    match operation {
        "CREATE" => "CREATE",
        "UPDATE" => "UPDATE",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// AdmissionReview bytes in, AdmissionReview bytes out. Synchronous: a decision never waits.
pub fn review(store: &PolicyStore, namespaces: &NamespaceLabels, webhook: Webhook, body: &[u8]) -> Response {
    let started = Instant::now();
    let metrics = store.metrics();
    let guard = store.in_force();
    let Some(snapshot) = guard.as_deref() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "registry-gate has no valid policy loaded yet\n")
            .into_response();
    };
    let request = match Request::parse(body) {
        Ok(request) => request,
        Err(ReviewError::UnreadableObject { uid, kind, name, detail, .. }) => {
            let answer = admission::unreadable(&uid, &kind, &name, &detail);
            metrics.requests.inc("unknown", kind_label(&kind), answer.outcome.label());
            return json_response(answer.response.to_review_json());
        }
        Err(e) => return malformed(metrics, &e),
    };
    let operation = operation_label(request.operation());
    let kind = kind_label(request.kind());
    // Looked up only when some registry is scoped by labels: most policies never pay for it.
    let entry =
        snapshot.policy.uses_namespace_labels().then(|| namespaces.get(request.namespace())).flatten();
    let answer = admission::answer(webhook, request, snapshot, entry.as_ref().map(|e| e.labels()));
    metrics.requests.inc(operation, kind, answer.outcome.label());
    let body = answer.response.to_review_json();
    metrics.duration.observe(started.elapsed().as_secs_f64());
    json_response(body)
}

/// A body that is not an AdmissionReview: 400 with the reason, counted as an error.
fn malformed(metrics: &Metrics, error: &ReviewError) -> Response {
    metrics.requests.inc("unknown", "unknown", "error");
    (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response()
}

fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

fn kind_label(kind: &str) -> &'static str {
    crate::metrics::COUNTED_KINDS.into_iter().find(|k| *k == kind).unwrap_or("other")
}
