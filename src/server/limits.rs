//! What bounds the webhook port's memory and connections, whatever its clients do.
//!
//! - **Connections**: at most `max_connections` past the accept; one more is closed at once
//!   (counted), never queued. Each costs about 100 KiB at worst (TLS buffers, a 64 KiB HTTP/1.1
//!   read buffer), so the default 512 bounds them to about 50 MiB.
//! - **Request bodies**: a budget of bytes shared by every request in flight, reserved from the
//!   declared `Content-Length` (3 MiB when none is declared) before the body is read, and held
//!   until the answer is written. A request that does not fit is answered 503 at once, so 60
//!   clients each stalling on a 3 MiB body hold the budget (32 MiB by default), not 180 MiB.
//! - **Each client's share of the bodies**: a client (the peer IP address of the TCP
//!   connection, whatever the number of its connections or HTTP/2 streams) may hold at most
//!   its share of the budget at once: a quarter of it by default, never less than one largest
//!   body (3 MiB) plus 1 MiB, so that one legitimate max-size review always fits beside a few
//!   ordinary ones. A request over its client's share gets the same 503 + `Retry-After: 1`.
//!   Without it, one client that declared large bodies and stalled, halving its size after each
//!   503, held the whole budget, and 92–95% of another client's requests were shed for as long
//!   as it lasted (the load generator's `abuse` mode, "budget filler"): memory was bounded,
//!   availability was not. With it, such a client holds its share and the rest of the budget
//!   stays for everyone else.
//! - **Idle connections**: a connection with no request within the header timeout of its
//!   handshake, or none for the idle timeout since its last one, is closed. HTTP/1.1 already
//!   times out request heads itself; HTTP/2 has nothing of the kind, so a client that sends its
//!   preface and then nothing was held forever.
//!
//! With the defaults, the worst case is about 22 MiB at rest + 50 MiB of connections + 32 MiB
//! of bodies, under the Deployment's 128 MiB limit.
//!
//! The API server is normally the webhook's only legitimate client, so the share mostly protects
//! it from anything else that can reach the port. It is not the whole defence: a client with
//! four addresses still fills the budget (IPv6 makes addresses cheap), so the webhook port
//! should also be reachable only from the API server, by a NetworkPolicy that admits the
//! control plane's addresses alone. Where every call arrives through one address (a
//! konnectivity agent or another proxy in front of the API servers), that address's share is
//! all the API server gets: 8 MiB by default, over a thousand typical 8 KiB reviews in flight;
//! `--body-memory-per-client-mib` equal to `--body-memory-mib` turns the share off.
//!
//! Costs: a connection takes one short lock on the map of clients when it opens and one when it
//! closes (the map holds an entry per address with a connection open, so at most
//! `max_connections` entries). A request takes no lock of its own: one compare-and-swap on its
//! client's counter beside the budget's semaphore (whose release takes tokio's own short
//! lock, as before), the counter's and the semaphore's `Arc`s cloned into what the request
//! holds (an atomic add each), and one atomic subtraction each when it ends. Both are taken in
//! the connection's service ([`Tracked`]), before the router.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::MAX_BODY_BYTES;
use crate::metrics::Metrics;

/// What a client's share is never less than: one largest body and room beside it for ordinary
/// reviews (about 8 KiB each).
pub(super) const MIN_CLIENT_SHARE: usize = MAX_BODY_BYTES + 1024 * 1024;

/// The bytes one client may hold: `per_client` when given (at least one largest body, so that
/// any legitimate review can be read), otherwise a quarter of the budget and at least
/// [`MIN_CLIENT_SHARE`]. Never more than the budget, which would mean nothing.
pub(super) fn client_share(budget: usize, per_client: Option<usize>) -> usize {
    let share = match per_client {
        Some(bytes) => bytes.max(MAX_BODY_BYTES),
        None => (budget / 4).max(MIN_CLIENT_SHARE),
    };
    share.min(budget.max(MAX_BODY_BYTES))
}

/// Bytes of request bodies that may be in memory at once, across all connections, and how
/// many of them one client may hold.
#[derive(Clone)]
pub(super) struct BodyBudget {
    bytes: Arc<Semaphore>,
    /// The most one client may hold, in bytes.
    share: usize,
    clients: Arc<Mutex<HashMap<IpAddr, ClientEntry>>>,
    metrics: Metrics,
}

/// A client in the map: its counter, and how many of its connections are open.
struct ClientEntry {
    bodies: ClientBodies,
    connections: usize,
}

impl BodyBudget {
    pub(super) fn new(bytes: usize, per_client: Option<usize>, metrics: Metrics) -> Self {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            share: client_share(bytes, per_client),
            clients: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// The client at `peer` opened a connection: its counter, shared with the client's other
    /// connections, until the returned lease is dropped (when the connection closes).
    pub(super) fn client(&self, peer: IpAddr) -> ClientLease {
        // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d; one key either way.
        let peer = peer.to_canonical();
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = clients
            .entry(peer)
            .or_insert_with(|| ClientEntry { bodies: ClientBodies::default(), connections: 0 });
        entry.connections += 1;
        ClientLease { bodies: entry.bodies.clone(), peer, clients: self.clients.clone() }
    }
}

/// Bytes of request bodies one client holds, across its connections.
#[derive(Clone, Default)]
pub(super) struct ClientBodies(Arc<AtomicUsize>);

impl ClientBodies {
    /// Reserves `size` bytes if the client then holds no more than `share`.
    fn reserve(self, size: usize, share: usize) -> Option<ClientHold> {
        // Only the counter's own value matters: relaxed ordering suffices.
        let fits = |held: usize| held.checked_add(size).filter(|&total| total <= share);
        self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, fits).ok()?;
        Some(ClientHold { bodies: self, size })
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bytes a request holds of its client's share, given back when dropped.
struct ClientHold {
    bodies: ClientBodies,
    size: usize,
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        self.bodies.0.fetch_sub(self.size, Ordering::Relaxed);
    }
}

/// A connection's hold on its client's entry in the map; the entry goes with the client's last
/// connection, so the map holds no more entries than there are connections open.
pub(super) struct ClientLease {
    bodies: ClientBodies,
    peer: IpAddr,
    clients: Arc<Mutex<HashMap<IpAddr, ClientEntry>>>,
}

impl ClientLease {
    /// What the connection's requests carry, to reserve from their client's share.
    pub(super) fn bodies(&self) -> ClientBodies {
        self.bodies.clone()
    }
}

impl Drop for ClientLease {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = clients.get_mut(&self.peer) {
            entry.connections -= 1;
            if entry.connections == 0 {
                // A request that outlived its connection keeps its own clone of the counter and
                // gives its bytes back to it; a new connection starts a new one.
                clients.remove(&self.peer);
            }
        }
    }
}

/// Why a request's body was not reserved: the answer it gets instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// 413: the declared body is larger than any review.
    TooLarge,
    /// 503 with `Retry-After: 1`: the body memory is in use, by everyone or by this client.
    Busy { over_client_share: bool },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::TooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 3 MiB\n").into_response()
            }
            Refusal::Busy { over_client_share } => {
                let text = if over_client_share {
                    "registry-gate is busy reading other requests from this client\n"
                } else {
                    "registry-gate is busy reading other requests\n"
                };
                let retry = [(header::RETRY_AFTER, HeaderValue::from_static("1"))];
                (StatusCode::SERVICE_UNAVAILABLE, retry, text).into_response()
            }
        }
    }
}

/// What a request holds of the body budget and of its client's share, given back when dropped
/// (when its answer is ready).
pub(super) struct BodyHold {
    _client: ClientHold,
    _budget: OwnedSemaphorePermit,
}

impl BodyBudget {
    /// Reserves a request's body size, as its `Content-Length` declares it (the largest body when
    /// it declares none), from its client's share and from the budget, before the body is read;
    /// or the answer to give instead: 413 for a declared size over the limit, 503 when either
    /// is in use.
    pub(super) fn reserve(&self, client: &ClientBodies, headers: &HeaderMap) -> Result<BodyHold, Refusal> {
        let declared =
            headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        let size = match declared {
            Some(length) if length > MAX_BODY_BYTES as u64 => {
                return Err(Refusal::TooLarge);
            }
            Some(length) => length as u32,
            // Chunked or undeclared: it may be as large as any body can be.
            None => MAX_BODY_BYTES as u32,
        };
        let Some(client) = client.clone().reserve(size as usize, self.share) else {
            return Err(self.shed(true));
        };
        // Dropping `client` on this early return gives the client's bytes back.
        let Ok(budget) = self.bytes.clone().try_acquire_many_owned(size) else {
            return Err(self.shed(false));
        };
        Ok(BodyHold { _client: client, _budget: budget })
    }

    /// A request shed because the body memory is in use, counted.
    fn shed(&self, over_client_share: bool) -> Refusal {
        self.metrics.requests_shed.inc();
        if over_client_share {
            self.metrics.requests_shed_per_client.inc();
        }
        Refusal::Busy { over_client_share }
    }
}

/// What one connection is doing, shared by its service (which counts requests) and its
/// watchdog (which closes it when idle).
pub(super) struct Activity {
    opened: Instant,
    /// The server's stopping flag: once set, every answer says `Connection: close`.
    closing: Arc<AtomicBool>,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `opened` when a request last started or ended.
    last_change_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new(closing: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            closing,
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

/// A connection's service: counts its requests for the idle watchdog, reserves each request's
/// body from the budget and from its client's share before the body is read (answering 413 or
/// 503 itself when it cannot), and once the server is stopping tells the client to close the
/// connection (HTTP/1.1; hyper drops the header on HTTP/2, where GOAWAY does this).
///
/// This is done here, where each request already gets one boxed future, rather than in
/// middleware of the router: each `from_fn` layer cost every request a clone of the services
/// below it (boxes and, for the budget, its metrics: an atomic add and subtraction on each of a
/// dozen counts both cores share), a boxed future and a request extension to carry the client.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
    pub(super) client: ClientBodies,
    pub(super) budget: BodyBudget,
}

impl<S, B> hyper::service::Service<hyper::Request<B>> for Tracked<S>
where
    S: hyper::service::Service<hyper::Request<B>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn call(&self, request: hyper::Request<B>) -> Self::Future {
        let in_flight = self.activity.begin();
        let answer =
            self.budget.reserve(&self.client, request.headers()).map(|hold| (hold, self.inner.call(request)));
        Box::pin(async move {
            let mut response = match answer {
                Ok((hold, answer)) => {
                    let response = answer.await?;
                    drop(hold);
                    response
                }
                Err(refusal) => refusal.into_response(),
            };
            if in_flight.0.closing.load(Ordering::Relaxed) {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(in_flight);
            Ok(response)
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

    const MIB: usize = 1024 * 1024;

    #[test]
    fn a_client_share_is_a_quarter_of_the_budget_and_always_fits_one_largest_body() {
        assert_eq!(client_share(32 * MIB, None), 8 * MIB);
        assert_eq!(client_share(64 * MIB, None), 16 * MIB);
        assert_eq!(client_share(8 * MIB, None), MIN_CLIENT_SHARE, "one 3 MiB review and more beside it");
        assert_eq!(
            client_share(2 * MIB, None),
            MAX_BODY_BYTES,
            "at least one largest body, even over a smaller budget"
        );
        assert_eq!(client_share(32 * MIB, Some(12 * MIB)), 12 * MIB);
        assert_eq!(client_share(32 * MIB, Some(MIB)), MAX_BODY_BYTES, "a largest body always fits");
        assert_eq!(client_share(32 * MIB, Some(64 * MIB)), 32 * MIB, "as large as the budget: no share");
    }

    #[test]
    fn a_client_holds_its_share_across_connections_and_its_entry_goes_with_them() {
        let budget = BodyBudget::new(32 * MIB, None, Metrics::new());
        let ip = |last: u8| IpAddr::from([10, 0, 0, last]);
        let (first, second) = (budget.client(ip(1)), budget.client(ip(1)));
        let other = budget.client(ip(2));
        let held = first.bodies().reserve(3 * MIB, budget.share).expect("within the share");
        let more = second.bodies().reserve(5 * MIB, budget.share).expect("the rest of the share");
        assert_eq!(first.bodies().held(), 8 * MIB, "one counter for the client's connections");
        assert!(second.bodies().reserve(1, budget.share).is_none(), "over the share, by any connection");
        assert!(other.bodies().reserve(8 * MIB, budget.share).is_some(), "another client has its own");
        drop(held);
        assert_eq!(first.bodies().held(), 5 * MIB, "given back when dropped");
        let again = first.bodies().reserve(3 * MIB, budget.share).expect("fits again");
        // An IPv4 client is one client whichever socket family it arrives on.
        let mapped = budget.client("::ffff:10.0.0.1".parse().expect("address"));
        assert!(mapped.bodies().reserve(MIB, budget.share).is_none());
        drop((first, second, mapped));
        assert_eq!(budget.clients.lock().expect("lock").len(), 1, "only the other client is left");
        // Holds that outlive their connections give their bytes back all the same.
        let orphaned = again.bodies.clone();
        drop((more, again));
        assert_eq!(orphaned.held(), 0);
        drop(other);
        assert!(budget.clients.lock().expect("lock").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_after_its_deadlines_and_never_mid_request() {
        let (first, idle_after) = (Duration::from_secs(5), Duration::from_secs(60));
        let activity = Activity::new(Arc::default());
        let opened = Instant::now();
        idle(&activity, first, idle_after).await;
        assert_eq!(Instant::now() - opened, first, "no request: closed after the first-request timeout");

        let activity = Activity::new(Arc::default());
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
