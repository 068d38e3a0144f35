//! HTTP listeners: Prometheus `/metrics`, and the admin API with its status
//! and self-test pages.
//!
//! Both run on the main thread. When asked, they read the main thread's core
//! directly and ask every other worker for a snapshot over its (bounded)
//! control channel, then add them up: the relay path keeps plain per-worker
//! counters and pays nothing for metrics; a scrape costs one pass over the
//! live allocations (counts only: the per-allocation list is built for
//! `/api/allocations` alone), one snapshot at a time. A worker whose channel
//! stays full makes the request fail with 503.
//!
//! Per-user byte counters (`prometheus-username-labels`): each core hands
//! the totals of allocations that ended over to the next snapshot and
//! forgets them; [`UserTotals`] here keeps the cumulative table, capped at
//! [`USER_TOTALS_CAP`] users (the smallest go to an `other` counter), so the
//! counters stay monotonic and memory stays bounded however many distinct
//! (REST) users come and go.
//!
//! Admin endpoints (all but `/healthz`, `/readyz` and the two pages need
//! `Authorization: Bearer TOKEN`; a token in the query string is refused, as
//! it would land in browser history and proxy logs):
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while accepting allocations, 503 while draining
//!   (no token: probes and load-balancer health checks cannot send one).
//!   With Redis configured the body also says whether it is reachable; an
//!   unreachable Redis keeps 200, since every node would otherwise leave
//!   the load balancer at once while each can still serve the users it
//!   last read.
//! - `GET /api/status`: JSON counters (the status page polls it).
//! - `GET /api/allocations`: JSON list of allocations.
//! - `DELETE /api/allocations/{id}`: ends one allocation (204, 404).
//! - `GET /api/fleet/allocations`: JSON list of every node's allocations,
//!   from the fleet registry in Redis (503 while Redis is unreachable, 404
//!   without Redis).
//! - `DELETE /api/fleet/allocations/{node}/{id}`: ends one allocation on
//!   whichever node holds it (202).
//! - `DELETE /api/fleet/users/{name}?seconds=S`: revokes a username
//!   (long-term or TURN REST) on every node: its allocations end and it is
//!   refused for S seconds (default 86400) (202; needs `redis-userdb`).
//! - `POST /api/credentials?user=U&ttl=S`: mints TURN REST credentials from
//!   the first configured secret (409 when there is none).
//! - `GET /`: the status page; `GET /selftest`: gathers candidates against
//!   this server in the visitor's own browser. Both are static and served
//!   without the token: their script (`GET /admin.js`, also public) asks for
//!   it (a password field, kept in `sessionStorage`) and sends it as a bearer
//!   token on the API calls.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info};

use super::worker::{Busy, CoreView, Workers};
use super::{Shell, ShellIo};
use crate::config::Config;
use crate::turn::{EndedUserBytes, Server, Transport};

/// What the HTTP handlers read.
pub(super) struct HttpState {
    pub core: Rc<RefCell<Server>>,
    pub shell: Rc<Shell>,
    pub config: Rc<RefCell<Config>>,
    pub workers: Rc<Workers>,
    /// The UDP listening addresses (served by the UDP workers), sorted.
    pub udp_listeners: Vec<std::net::SocketAddr>,
    pub started: Instant,
    /// Cumulative per-user byte totals of ended allocations.
    pub user_totals: RefCell<UserTotals>,
    /// One snapshot at a time: concurrent requests wait their turn.
    pub gather_lock: tokio::sync::Mutex<()>,
    /// The fleet task's state, when Redis is configured.
    pub fleet: Option<Rc<super::fleet::FleetStatus>>,
    /// The XDP fast path, when `xdp` is on.
    pub fast_path: Option<std::sync::Arc<super::xdp::FastPath>>,
}

/// Most users [`UserTotals`] keeps.
pub(super) const USER_TOTALS_CAP: usize = 10_000;

/// Per-user payload bytes (client to peer, peer to client) of ended
/// allocations since start, at most `cap` users: past it, the users with
/// the fewest bytes are dropped down to 90 % of the cap and their bytes
/// added to `other` (a dropped user's series disappears; should it come back
/// its counter starts again from its new bytes).
#[derive(Debug)]
pub(super) struct UserTotals {
    users: HashMap<Arc<str>, (u64, u64)>,
    other: (u64, u64),
    cap: usize,
}

impl UserTotals {
    /// An empty table that keeps at most `cap` users.
    pub fn new(cap: usize) -> UserTotals {
        UserTotals {
            users: HashMap::new(),
            other: (0, 0),
            cap,
        }
    }

    /// Adds the totals a snapshot took from the cores.
    fn add(&mut self, ended: &EndedUserBytes) {
        self.other.0 += ended.other.0;
        self.other.1 += ended.other.1;
        for (u, (a, b)) in &ended.users {
            let e = self.users.entry(u.clone()).or_insert((0, 0));
            e.0 += a;
            e.1 += b;
        }
        if self.users.len() > self.cap {
            let mut all: Vec<_> = self.users.drain().collect();
            // Largest first; ties by name so the choice is deterministic.
            all.sort_unstable_by(|(ua, a), (ub, b)| (b.0 + b.1, ua).cmp(&(a.0 + a.1, ub)));
            for (_, (a, b)) in all.drain(self.cap * 9 / 10..) {
                self.other.0 += a;
                self.other.1 += b;
            }
            self.users = all.into_iter().collect();
        }
    }
}

/// Every worker's snapshot, added up (with the allocation list when
/// `detail`); the ended users' totals go into [`HttpState::user_totals`].
///
/// # Errors
/// [`Busy`] when a worker's control channel stayed full.
pub(super) async fn gather(state: &HttpState, detail: bool) -> Result<CoreView, Busy> {
    let _one_at_a_time = state.gather_lock.lock().await;
    let connections = state.shell.conns.borrow().len();
    let mut view = CoreView::of(&mut state.core.borrow_mut(), connections, detail);
    // The main thread's core (TCP and TLS clients) is not a UDP worker.
    view.workers = 0;
    for v in state.workers.views(detail).await? {
        view.merge(v);
    }
    state
        .user_totals
        .borrow_mut()
        .add(&std::mem::take(&mut view.ended_user_bytes));
    Ok(view)
}

/// 503 for a request that found a worker's control channel full.
fn busy() -> Resp {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy: a relay worker's control queue is full, try again\n",
    )
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

fn text(status: StatusCode, body: &str) -> Resp {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    respond(status, "application/json", v.to_string())
}

/// Open connections each HTTP listener serves at once; one more is closed
/// as soon as it is accepted.
pub(super) const MAX_HTTP_CONNECTIONS: usize = 32;

/// Longest request head (request line and headers) in bytes; a longer one
/// gets 431. hyper's smallest read buffer is 8 KiB.
pub(super) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header lines in a request.
const MAX_HEADERS: usize = 32;

/// Time a client has to send a complete request head (also between
/// requests on a kept-alive connection).
pub(super) const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest life of one HTTP connection, however busy.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves HTTP/1.1 on `listener` with `handler` until the task is dropped:
/// at most [`MAX_HTTP_CONNECTIONS`] at once, request heads of at most
/// [`MAX_HEAD_BYTES`] that arrive within [`HEADER_READ_TIMEOUT`], each
/// connection closed after [`CONNECTION_LIFETIME`].
pub(super) async fn serve<F, Fut>(listener: TcpListener, state: Rc<HttpState>, handler: F)
where
    F: Fn(Request<Incoming>, Rc<HttpState>) -> Fut + Copy + 'static,
    Fut: std::future::Future<Output = Resp> + 'static,
{
    let open = Rc::new(std::cell::Cell::new(0usize));
    let local = listener.local_addr().ok();
    let mut failures = super::stream::AcceptFailures::with_spare("http");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                failures.on_error(&listener, local, e);
                tokio::time::sleep(super::stream::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        failures.on_success(local);
        if open.get() >= MAX_HTTP_CONNECTIONS {
            debug!(%peer, "http connection refused: {MAX_HTTP_CONNECTIONS} already open");
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let open = OpenGuard(open.clone());
        let state = state.clone();
        tokio::task::spawn_local(async move {
            let _open = open;
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handler(req, state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            // Bounded: a client may not hold a connection forever.
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => debug!(%peer, error = %e, "http connection error"),
                Err(_) => debug!(%peer, "http connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// Counts one open HTTP connection until dropped.
struct OpenGuard(Rc<std::cell::Cell<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// `GET /metrics` in the Prometheus text format (version 0.0.4).
pub(super) async fn metrics(req: Request<Incoming>, state: Rc<HttpState>) -> Resp {
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "only /metrics here\n");
    }
    let Ok(view) = gather(&state, false).await else {
        return busy();
    };
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        render_metrics(&state, &view),
    )
}

/// A counter family written by `render_metrics`: name, help, label name,
/// and the value of each label value.
type CounterFamily<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, u64)]);

/// The XDP fast path's metrics (see `xdp.rs`): what the kernel relayed,
/// what it passed to user space and why, its entries and attachments.
fn render_xdp_metrics(
    o: &mut String,
    fp: &super::xdp::FastPath,
    kernel: &crate::turn::KernelRelayed,
) {
    let _ = writeln!(o, "# HELP turnd_xdp_relayed_packets_total Packets relayed in the kernel by the XDP fast path, by direction (part of turnd_relayed_packets_total; counted up to 1 s late).\n# TYPE turnd_xdp_relayed_packets_total counter");
    let _ = writeln!(
        o,
        "turnd_xdp_relayed_packets_total{{direction=\"client_to_peer\"}} {}",
        kernel.packets_to_peer
    );
    let _ = writeln!(
        o,
        "turnd_xdp_relayed_packets_total{{direction=\"peer_to_client\"}} {}",
        kernel.packets_to_client
    );
    let _ = writeln!(o, "# HELP turnd_xdp_relayed_bytes_total Payload bytes relayed in the kernel by the XDP fast path, by direction (part of turnd_relayed_bytes_total).\n# TYPE turnd_xdp_relayed_bytes_total counter");
    let _ = writeln!(
        o,
        "turnd_xdp_relayed_bytes_total{{direction=\"client_to_peer\"}} {}",
        kernel.bytes_to_peer
    );
    let _ = writeln!(
        o,
        "turnd_xdp_relayed_bytes_total{{direction=\"peer_to_client\"}} {}",
        kernel.bytes_to_client
    );
    let counters = fp.counters();
    let _ = writeln!(o, "# HELP turnd_xdp_passed_packets_total Packets the XDP program passed to the kernel's stack (and so to user space), by reason.\n# TYPE turnd_xdp_passed_packets_total counter");
    for ((kind, reason), n) in super::xdp::COUNTERS.iter().zip(counters) {
        if *kind == "passed" {
            let _ = writeln!(
                o,
                "turnd_xdp_passed_packets_total{{reason=\"{reason}\"}} {n}"
            );
        }
    }
    let _ = writeln!(o, "# HELP turnd_xdp_sent_packets_total Packets the XDP program sent on, by direction and how (tx: out of the interface they came in on; redirect: another interface).\n# TYPE turnd_xdp_sent_packets_total counter");
    for ((kind, how), n) in super::xdp::COUNTERS.iter().zip(counters) {
        if *kind == "sent" {
            let _ = writeln!(o, "turnd_xdp_sent_packets_total{{path=\"{how}\"}} {n}");
        }
    }
    let _ = writeln!(o, "# HELP turnd_xdp_entries Channel bindings in the XDP fast path's maps.\n# TYPE turnd_xdp_entries gauge\nturnd_xdp_entries {}", fp.entries());
    let _ = writeln!(o, "# HELP turnd_xdp_refused_entries_total Channel bindings the fast path's maps had no room for (they stay in user space).\n# TYPE turnd_xdp_refused_entries_total counter\nturnd_xdp_refused_entries_total {}", fp.refused());
    let _ = writeln!(o, "# HELP turnd_xdp_attached The XDP program is attached to this interface in this mode.\n# TYPE turnd_xdp_attached gauge");
    for i in fp.interfaces() {
        let _ = writeln!(
            o,
            "turnd_xdp_attached{{interface=\"{i}\",mode=\"{}\"}} 1",
            fp.mode().as_str()
        );
    }
}

fn render_metrics(state: &HttpState, view: &CoreView) -> String {
    let stats = view.stats;
    let mut o = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_owned()
    };
    let _ = family(
        "turnd_allocations",
        "gauge",
        "Live allocations by client transport and relay address family.",
    );
    let mut active: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for t in ["udp", "tcp", "tls"] {
        for f in ["ipv4", "ipv6"] {
            active.insert((t, f), 0);
        }
    }
    let (permissions, channels) = (view.permissions, view.channels);
    for ((transport, relay_is_ipv4), n) in &view.allocation_counts {
        let t = match transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        };
        let f = if *relay_is_ipv4 { "ipv4" } else { "ipv6" };
        *active.entry((t, f)).or_insert(0) += *n as u64;
    }
    for ((t, f), n) in &active {
        let _ = writeln!(
            o,
            "turnd_allocations{{transport=\"{t}\",family=\"{f}\"}} {n}"
        );
    }
    let counters: [(&str, &str, u64); 3] = [
        (
            "turnd_allocations_created_total",
            "Allocations created.",
            stats.allocations_created,
        ),
        (
            "turnd_allocations_expired_total",
            "Allocations that expired.",
            stats.allocations_expired,
        ),
        (
            "turnd_allocations_deleted_total",
            "Allocations deleted by the client, a closed connection or the admin API.",
            stats.allocations_deleted,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let _ = writeln!(o, "# HELP turnd_requests_total Requests answered, by method and result code (200 is success).\n# TYPE turnd_requests_total counter");
    // Methods turnd does not know are added up under one label, so each
    // label set is one series and a client cannot mint new series.
    let mut reqs: BTreeMap<(&str, u16), u64> = BTreeMap::new();
    for ((m, c), n) in &view.requests {
        *reqs.entry((method_label(*m), *c)).or_insert(0) += n;
    }
    for ((method, c), n) in reqs {
        let _ = writeln!(
            o,
            "turnd_requests_total{{method=\"{method}\",code=\"{c}\"}} {n}"
        );
    }
    let _ = writeln!(o, "# HELP turnd_auth_failures_total Failed authentications by reason.\n# TYPE turnd_auth_failures_total counter");
    let mut reasons: Vec<_> = view
        .auth_failures
        .iter()
        .map(|(r, n)| (r.as_str(), *n))
        .collect();
    reasons.sort();
    for (r, n) in reasons {
        let _ = writeln!(o, "turnd_auth_failures_total{{reason=\"{r}\"}} {n}");
    }
    let own = stats.own_address_refused;
    let labelled: [CounterFamily<'_>; 4] = [
        (
            "turnd_relayed_packets_total",
            "Packets relayed, by direction.",
            "direction",
            &[
                ("client_to_peer", stats.packets_to_peer),
                ("peer_to_client", stats.packets_to_client),
            ],
        ),
        (
            "turnd_relayed_bytes_total",
            "Payload bytes relayed, by direction.",
            "direction",
            &[
                ("client_to_peer", stats.bytes_to_peer),
                ("peer_to_client", stats.bytes_to_client),
            ],
        ),
        (
            "turnd_dropped_packets_total",
            "Packets dropped, by reason.",
            "reason",
            &[
                ("from_client", stats.dropped_from_client),
                ("from_peer", stats.dropped_from_peer),
                ("bandwidth", stats.dropped_bandwidth),
                ("rate_limited", stats.rate_limited),
                ("denied_client", stats.denied_clients),
            ],
        ),
        (
            "turnd_own_address_refused_total",
            "Attempts to relay to an address of this host (outside the relay port range) refused, by path.",
            "path",
            &[
                ("create_permission", own.create_permission),
                ("channel_bind", own.channel_bind),
                ("send", own.send),
                ("connect", own.connect),
                ("peer_datagram", own.peer_datagram),
                ("peer_connection", own.peer_connection),
            ],
        ),
    ];
    for (name, help, label, values) in labelled {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (v, n) in values {
            let _ = writeln!(o, "{name}{{{label}=\"{v}\"}} {n}");
        }
    }
    let _ = writeln!(o, "# HELP turnd_allocations_shed_total Allocate requests turned away for load (answered 300 Try Alternate, or 508 when no alternate-server fits; the codes are in turnd_requests_total), by reason.\n# TYPE turnd_allocations_shed_total counter");
    for (reason, n) in stats.allocations_shed.by_reason() {
        let _ = writeln!(
            o,
            "turnd_allocations_shed_total{{reason=\"{}\"}} {n}",
            reason.as_str()
        );
    }
    let _ = writeln!(o, "# HELP turnd_permissions Live permissions.\n# TYPE turnd_permissions gauge\nturnd_permissions {permissions}");
    let _ = writeln!(o, "# HELP turnd_channels Live channel bindings.\n# TYPE turnd_channels gauge\nturnd_channels {channels}");
    let _ = writeln!(o, "# HELP turnd_relay_ports_free Relay ports still free, by relay address.\n# TYPE turnd_relay_ports_free gauge");
    let mut ports: Vec<_> = view.ports_free.iter().map(|(ip, n)| (*ip, *n)).collect();
    ports.sort();
    for (ip, n) in ports {
        let _ = writeln!(o, "turnd_relay_ports_free{{relay_ip=\"{ip}\"}} {n}");
    }
    let _ = writeln!(o, "# HELP turnd_connections Open TCP and TLS client connections.\n# TYPE turnd_connections gauge\nturnd_connections {}", view.connections);
    if let Some(gate) = state.shell.gate.get() {
        let (total, per_ip) = gate.refused();
        let _ = writeln!(o, "# HELP turnd_connections_admitted TCP and TLS connections admitted and not yet closed, TLS handshakes included.\n# TYPE turnd_connections_admitted gauge\nturnd_connections_admitted {}", gate.open());
        let _ = writeln!(o, "# HELP turnd_connections_refused_total TCP and TLS connections closed at accept, by the limit that refused them.\n# TYPE turnd_connections_refused_total counter");
        let _ = writeln!(
            o,
            "turnd_connections_refused_total{{limit=\"max-connections\"}} {total}"
        );
        let _ = writeln!(
            o,
            "turnd_connections_refused_total{{limit=\"max-connections-per-ip\"}} {per_ip}"
        );
        let _ = writeln!(
            o,
            "turnd_connections_refused_total{{limit=\"denied-client-ip\"}} {}",
            gate.refused_denied()
        );
    }
    if let Some(f) = &state.fleet {
        let _ = writeln!(o, "# HELP turnd_redis_up Whether this node is connected to the fleet's Redis (1) or serving the users it last read (0).\n# TYPE turnd_redis_up gauge\nturnd_redis_up {}", u8::from(f.up.get()));
        let _ = writeln!(o, "# HELP turnd_redis_failures_total Redis sessions lost or refused (each followed by a reconnect with backoff).\n# TYPE turnd_redis_failures_total counter\nturnd_redis_failures_total {}", f.failures.get());
        let _ = writeln!(o, "# HELP turnd_redis_users Users last read from Redis.\n# TYPE turnd_redis_users gauge\nturnd_redis_users {}", f.users.get());
    }
    if let Some(fp) = &state.fast_path {
        render_xdp_metrics(&mut o, fp, &view.stats.kernel);
    }
    let _ = writeln!(o, "# HELP turnd_workers Relay workers (threads with their own UDP listeners and allocations) that answered this scrape.\n# TYPE turnd_workers gauge\nturnd_workers {}", view.workers);
    if state.config.borrow().prometheus_username_labels {
        let _ = writeln!(o, "# HELP turnd_user_relayed_bytes_total Payload bytes relayed per user and direction.\n# TYPE turnd_user_relayed_bytes_total counter");
        let totals = state.user_totals.borrow();
        let mut users: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (u, (a, b)) in totals.users.iter().chain(&view.user_bytes) {
            let e = users.entry(&**u).or_insert((0, 0));
            e.0 += a;
            e.1 += b;
        }
        for (u, (to_peer, to_client)) in users {
            let u = u
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(o, "turnd_user_relayed_bytes_total{{user=\"{u}\",direction=\"client_to_peer\"}} {to_peer}");
            let _ = writeln!(o, "turnd_user_relayed_bytes_total{{user=\"{u}\",direction=\"peer_to_client\"}} {to_client}");
        }
        let _ = writeln!(o, "# HELP turnd_user_relayed_bytes_other_total Payload bytes of ended allocations whose users were dropped from the per-user counters (at most {USER_TOTALS_CAP} users are kept).\n# TYPE turnd_user_relayed_bytes_other_total counter");
        let _ = writeln!(
            o,
            "turnd_user_relayed_bytes_other_total{{direction=\"client_to_peer\"}} {}",
            totals.other.0
        );
        let _ = writeln!(
            o,
            "turnd_user_relayed_bytes_other_total{{direction=\"peer_to_client\"}} {}",
            totals.other.1
        );
    }
    let _ = writeln!(o, "# HELP turnd_uptime_seconds Seconds since start.\n# TYPE turnd_uptime_seconds gauge\nturnd_uptime_seconds {}", state.started.elapsed().as_secs());
    o
}

/// The `method` label of `turnd_requests_total`: the RFC name in snake_case,
/// or `unknown` for every method turnd does not implement.
fn method_label(m: crate::stun::Method) -> &'static str {
    use crate::stun::Method as M;
    match m {
        M::BINDING => "binding",
        M::ALLOCATE => "allocate",
        M::REFRESH => "refresh",
        M::SEND => "send",
        M::DATA => "data",
        M::CREATE_PERMISSION => "create_permission",
        M::CHANNEL_BIND => "channel_bind",
        M::CONNECT => "connect",
        M::CONNECTION_BIND => "connection_bind",
        M::CONNECTION_ATTEMPT => "connection_attempt",
        _ => "unknown",
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// True when `Authorization: Bearer` carries `token` (only that header: a
/// token in the query string is not looked at).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    let Some(given) = given else { return false };
    // Constant time in the token's length.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |d, (a, b)| d | (a ^ b))
            == 0
}

/// The admin API and pages.
pub(super) async fn admin(req: Request<Incoming>, state: Rc<HttpState>) -> Resp {
    let token = state
        .config
        .borrow()
        .admin_token
        .as_ref()
        .map(|t| t.0.clone())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        // Kubernetes probes and load-balancer health checks cannot send a
        // token; the answer tells nothing but whether this node takes new
        // allocations.
        (&Method::GET, "/readyz") => {
            let redis = match &state.fleet {
                None => String::new(),
                Some(f) if f.up.get() => "redis: reachable\n".into(),
                Some(f) => format!(
                    "redis: unreachable for {} s, serving the users last read\n",
                    f.down_since.get().map_or(0, |t| t.elapsed().as_secs()),
                ),
            };
            return if state.core.borrow().is_draining() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("draining\n{redis}"),
                )
            } else {
                text(StatusCode::OK, &format!("ready\n{redis}"))
            };
        }
        // Static pages without data: their script asks for the token.
        (&Method::GET, "/") => {
            return respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE)
        }
        (&Method::GET, "/selftest") => {
            return respond(StatusCode::OK, "text/html; charset=utf-8", SELFTEST_PAGE)
        }
        (&Method::GET, "/admin.js") => {
            return respond(StatusCode::OK, "text/javascript; charset=utf-8", ADMIN_JS)
        }
        _ => {}
    }
    if token.is_empty() || !authorized(&req, &token) {
        let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        r.headers_mut().insert(
            "www-authenticate",
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    match (method, path.as_str()) {
        (_, p) if p.starts_with("/api/fleet/") => fleet_api(&req, &state, p).await,
        (Method::GET, "/api/status") => match gather(&state, false).await {
            Ok(view) => json(StatusCode::OK, &status_json(&state, &view)),
            Err(Busy) => busy(),
        },
        (Method::GET, "/api/allocations") => match gather(&state, true).await {
            Ok(view) => json(StatusCode::OK, &allocations_json(&view)),
            Err(Busy) => busy(),
        },
        (Method::DELETE, p) if p.starts_with("/api/allocations/") => {
            let Ok(id) = p["/api/allocations/".len()..].parse::<u64>() else {
                return text(StatusCode::BAD_REQUEST, "allocation id must be a number\n");
            };
            let deleted = {
                let mut io = ShellIo {
                    shell: &state.shell,
                    core: &state.core,
                };
                state.core.borrow_mut().delete_allocation_by_id(id, &mut io)
            } || state.workers.delete(id).await;
            if deleted {
                info!(allocation = id, "allocation deleted through the admin API");
                respond(StatusCode::NO_CONTENT, "text/plain", "")
            } else {
                text(StatusCode::NOT_FOUND, "no such allocation\n")
            }
        }
        (Method::POST, "/api/credentials") => credentials(&req, &state),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/api/fleet/...` (see the module docs).
async fn fleet_api(req: &Request<Incoming>, state: &HttpState, path: &str) -> Resp {
    let Some(fleet) = &state.fleet else {
        return text(
            StatusCode::NOT_FOUND,
            "no fleet: redis-userdb and redis-statsdb are not configured\n",
        );
    };
    let unreachable = || text(StatusCode::SERVICE_UNAVAILABLE, "Redis is unreachable\n");
    let rest = &path["/api/fleet/".len()..];
    match (req.method(), rest) {
        (&Method::GET, "allocations") => {
            let Some(mut con) = fleet.statsdb.borrow().clone() else {
                return unreachable();
            };
            match crate::fleet::fleet_allocations(&mut con).await {
                Ok(list) => json(StatusCode::OK, &serde_json::json!(list)),
                Err(_) => unreachable(),
            }
        }
        (&Method::DELETE, r) if r.starts_with("allocations/") => {
            let Some((node, id)) = r["allocations/".len()..].split_once('/') else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "expected /api/fleet/allocations/NODE/ID\n",
                );
            };
            let Ok(id) = id.parse::<u64>() else {
                return text(StatusCode::BAD_REQUEST, "allocation id must be a number\n");
            };
            if !crate::fleet::valid_node_name(node) {
                return text(StatusCode::BAD_REQUEST, "not a node name\n");
            }
            let Some(mut con) = fleet.statsdb.borrow().clone() else {
                return unreachable();
            };
            match crate::fleet::delete_allocation(&mut con, node, id).await {
                Ok(()) => {
                    info!(node, allocation = id, "fleet allocation delete published");
                    respond(StatusCode::ACCEPTED, "text/plain", "")
                }
                Err(_) => unreachable(),
            }
        }
        (&Method::DELETE, r) if r.starts_with("users/") => {
            let name = percent_decode(&r["users/".len()..]);
            if name.is_empty() {
                return text(StatusCode::BAD_REQUEST, "expected /api/fleet/users/NAME\n");
            }
            let seconds: u64 = query_param(req.uri().query().unwrap_or(""), "seconds")
                .and_then(|t| t.parse().ok())
                .unwrap_or(86_400)
                .clamp(1, 86_400 * 365);
            let Some(mut con) = fleet.userdb.borrow().clone() else {
                return if fleet.has_userdb {
                    unreachable()
                } else {
                    text(StatusCode::CONFLICT, "revocation needs redis-userdb\n")
                };
            };
            let realm = fleet.realm.borrow().clone();
            match crate::fleet::revoke(&mut con, &realm, &name, seconds).await {
                Ok(()) => {
                    info!(user = %crate::untrusted::LogSafe(&name), seconds, "user revoked fleet-wide through the admin API");
                    respond(StatusCode::ACCEPTED, "text/plain", "")
                }
                Err(_) => unreachable(),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `%XX` escapes of a path segment decoded (invalid ones kept as they are).
fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn credentials(req: &Request<Incoming>, state: &HttpState) -> Resp {
    let config = state.config.borrow();
    let Some(secret) = config.static_auth_secrets.first() else {
        return text(
            StatusCode::CONFLICT,
            "no static-auth-secret configured: REST credentials cannot be minted\n",
        );
    };
    let query = req.uri().query().unwrap_or("");
    let user = query_param(query, "user").unwrap_or("selftest");
    let ttl: u64 = query_param(query, "ttl")
        .and_then(|t| t.parse().ok())
        .unwrap_or(3600)
        .clamp(60, 86_400 * 7);
    if user.is_empty()
        || user.len() > 128
        || !user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return text(
            StatusCode::BAD_REQUEST,
            "user must be 1-128 characters of [A-Za-z0-9-_.@]\n",
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let username = crate::auth::rest_username(now + ttl, config.rest_api_separator, user);
    let password = crate::auth::rest_password(&secret.0, &username);
    json(
        StatusCode::OK,
        &serde_json::json!({ "username": username, "password": password, "ttl": ttl }),
    )
}

fn status_json(state: &HttpState, view: &CoreView) -> serde_json::Value {
    let stats = view.stats;
    let config = state.config.borrow();
    let udp: Vec<String> = state.udp_listeners.iter().map(|a| a.to_string()).collect();
    serde_json::json!({
        "uptime_s": state.started.elapsed().as_secs(),
        "draining": view.draining,
        "workers": view.workers,
        "realm": config.realm,
        "rest_credentials": !config.static_auth_secrets.is_empty(),
        "listening_port": udp.first().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse::<u16>().ok()),
        "udp_listeners": udp,
        "allocations": view.allocation_total(),
        "connections": view.connections,
        "allocations_created": stats.allocations_created,
        "packets_to_peer": stats.packets_to_peer,
        "packets_to_client": stats.packets_to_client,
        "bytes_to_peer": stats.bytes_to_peer,
        "bytes_to_client": stats.bytes_to_client,
        "auth_failures": stats.auth_failures,
        "rate_limited": stats.rate_limited,
    })
}

fn allocations_json(view: &CoreView) -> serde_json::Value {
    let now = Instant::now();
    let mut list: Vec<_> = view.allocations.iter().collect();
    list.sort_by_key(|a| a.id);
    let list: Vec<serde_json::Value> = list
        .into_iter()
        .map(|a| {
            serde_json::json!({
                "id": a.id,
                "user": &*a.user,
                "client": a.client.to_string(),
                "relay": a.relay.to_string(),
                "additional_relay": a.additional_relay.map(|r| r.to_string()),
                "transport": format!("{:?}", a.transport).to_lowercase(),
                "relay_transport": if a.tcp_relay { "tcp" } else { "udp" },
                "age_s": now.saturating_duration_since(a.created).as_secs(),
                "expires_in_s": a.expires.saturating_duration_since(now).as_secs(),
                "bytes_to_peer": a.bytes_to_peer,
                "bytes_to_client": a.bytes_to_client,
                "packets_to_peer": a.packets_to_peer,
                "packets_to_client": a.packets_to_client,
                "permissions": a.permissions,
                "channels": a.channels,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

/// Shared by both pages: asks for the admin token (a password field), keeps
/// it in `sessionStorage` and sends it as a bearer token; a 401 asks again.
/// The page defines `start()` (run once a token is there) and calls `begin()`.
const ADMIN_JS: &str = r#"// The token is asked for here and kept in sessionStorage (this tab only),
// never put in the URL; the API gets it as a bearer token.
function token() { return sessionStorage.getItem('turnd-admin-token') || ''; }
function auth(extra) { return {...extra, headers: {Authorization: 'Bearer ' + token()}}; }
async function api(path, extra) {
  const r = await fetch(path, auth(extra));
  if (r.status === 401) { sessionStorage.removeItem('turnd-admin-token'); askToken('wrong token'); throw new Error('unauthorized'); }
  return r.json();
}
function askToken(why) {
  const f = document.getElementById('login'); f.hidden = false;
  document.getElementById('login-error').textContent = why || '';
  document.getElementById('token').focus();
}
document.getElementById('login').onsubmit = (e) => {
  e.preventDefault();
  sessionStorage.setItem('turnd-admin-token', document.getElementById('token').value);
  document.getElementById('token').value = '';
  document.getElementById('login').hidden = true;
  start();
};
function begin() { if (token()) start(); else askToken(); }
"#;

/// The status page: live counts from `/api/status`, the allocation table.
const STATUS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>turnd status</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}td,th{padding:.2em .8em;text-align:left}
table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}.num{font-variant-numeric:tabular-nums}</style></head>
<body><h1>turnd</h1>
<form id="login" hidden><label>Admin token <input id="token" type="password" autocomplete="current-password"></label> <button id="login-button">Sign in</button> <span id="login-error"></span></form>
<p><a id="selftest" href="selftest">Self-test this server from your browser</a></p>
<h2>Now</h2><table id="status"></table>
<h2>Allocations</h2><table id="allocs"><thead><tr><th>id</th><th>user</th><th>client</th><th>relay</th><th>transport</th><th>age (s)</th><th>bytes to peer</th><th>bytes to client</th></tr></thead><tbody></tbody></table>
<script src="admin.js"></script>
<script>
function cell(tr, v) { const td = document.createElement('td'); td.textContent = v; tr.appendChild(td); }
async function refresh() {
  const s = await api('api/status');
  const t = document.getElementById('status'); t.textContent = '';
  for (const [k, v] of Object.entries(s)) { const tr = document.createElement('tr'); tr.id = 'status-' + k; cell(tr, k); cell(tr, JSON.stringify(v)); t.appendChild(tr); }
  const a = await api('api/allocations');
  const b = document.querySelector('#allocs tbody'); b.textContent = '';
  for (const x of a) { const tr = document.createElement('tr');
    for (const k of ['id','user','client','relay','transport','age_s','bytes_to_peer','bytes_to_client']) cell(tr, x[k]);
    b.appendChild(tr); }
  document.body.dataset.refreshed = String(Date.now());
}
let timer = null;
function start() { refresh().catch(() => {}); if (!timer) timer = setInterval(() => { if (token()) refresh().catch(() => {}); }, 2000); }
begin();
</script></body></html>
"#;

/// The self-test page: like the Trickle ICE sample, gathers candidates
/// against this server in the visitor's browser and shows srflx and relay.
const SELFTEST_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>turnd self-test</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}td,th{padding:.2em .8em;text-align:left}.ok{color:#070}.bad{color:#a00}</style></head>
<body><h1>turnd self-test</h1>
<form id="login" hidden><label>Admin token <input id="token" type="password" autocomplete="current-password"></label> <button id="login-button">Sign in</button> <span id="login-error"></span></form>
<p>Gathers ICE candidates against this server from your browser. A working server gives a <b>srflx</b> candidate (STUN) and a <b>relay</b> candidate (TURN).</p>
<p><label>Host <input id="host"></label> <label>Port <input id="port" size="6"></label>
<label>User <input id="user"></label> <label>Password <input id="password" type="password"></label>
<button id="run">Gather candidates</button></p>
<p id="verdict"></p>
<table><thead><tr><th>type</th><th>protocol</th><th>address</th><th>port</th><th>url</th></tr></thead><tbody id="cands"></tbody></table>
<pre id="errors"></pre>
<script src="admin.js"></script>
<script>
document.getElementById('host').value = location.hostname;
async function init() {
  const s = await api('api/status');
  document.getElementById('port').value = s.listening_port || 3478;
  if (s.rest_credentials) {
    const c = await api('api/credentials?user=selftest&ttl=600', {method: 'POST'});
    document.getElementById('user').value = c.username;
    document.getElementById('password').value = c.password;
  }
  document.body.dataset.ready = '1';
}
async function run() {
  const host = document.getElementById('host').value, port = document.getElementById('port').value;
  const hostPart = host.includes(':') ? '[' + host + ']' : host;
  const iceServers = [{urls: 'stun:' + hostPart + ':' + port},
    {urls: 'turn:' + hostPart + ':' + port + '?transport=udp', username: document.getElementById('user').value, credential: document.getElementById('password').value}];
  const pc = new RTCPeerConnection({iceServers, iceTransportPolicy: 'all'});
  const found = {srflx: false, relay: false}; const body = document.getElementById('cands'); body.textContent = '';
  const hosts = new Set(); const mapped = [];
  document.getElementById('errors').textContent = '';
  pc.onicecandidate = (e) => { if (!e.candidate || !e.candidate.candidate) return; const c = e.candidate;
    if (c.type in found) found[c.type] = true;
    if (c.type === 'host') hosts.add(c.address);
    if (c.type === 'relay' && c.relatedAddress) mapped.push(c.relatedAddress);
    const tr = document.createElement('tr'); tr.className = 'cand cand-' + c.type;
    for (const v of [c.type, c.protocol, c.address, c.port, c.url || '']) { const td = document.createElement('td'); td.textContent = v; tr.appendChild(td); }
    body.appendChild(tr); };
  pc.onicecandidateerror = (e) => { document.getElementById('errors').textContent += 'error ' + e.errorCode + ' ' + e.errorText + ' (' + e.url + ')\n'; };
  pc.createDataChannel('selftest');
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => { const t = setTimeout(r, 10000); pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') { clearTimeout(t); r(); } }; });
  pc.close();
  // Without NAT the reflexive address equals a host address and browsers
  // drop the srflx candidate as redundant: the relay candidate's related
  // address (the server's XOR-MAPPED-ADDRESS) shows STUN worked.
  const noNat = !found.srflx && mapped.some((a) => hosts.has(a));
  const srflx = found.srflx || noNat;
  const v = document.getElementById('verdict');
  v.textContent = 'srflx: ' + (found.srflx ? 'yes' : noNat ? 'yes (no NAT: same as your host address)' : 'NO') + ', relay: ' + (found.relay ? 'yes' : 'NO');
  v.className = srflx && found.relay ? 'ok' : 'bad';
  document.body.dataset.srflx = String(srflx); document.body.dataset.relay = String(found.relay); document.body.dataset.done = '1';
}
document.getElementById('run').onclick = run;
function start() { init().catch(() => {}); }
begin();
</script></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(users: &[(&str, u64)], other: u64) -> EndedUserBytes {
        EndedUserBytes {
            users: users
                .iter()
                .map(|(u, n)| (Arc::from(*u), (*n, *n)))
                .collect(),
            other: (other, other),
            other_allocations: u64::from(other > 0),
        }
    }

    #[test]
    fn user_totals_add_up_and_stay_under_the_cap() {
        let mut t = UserTotals::new(10);
        t.add(&ended(&[("a", 1), ("b", 2)], 0));
        t.add(&ended(&[("a", 3)], 7));
        assert_eq!(t.users[&Arc::from("a")], (4, 4));
        assert_eq!(t.users[&Arc::from("b")], (2, 2));
        assert_eq!(t.other, (7, 7));

        // 20 more users: past the cap the smallest go, down to 9, their
        // bytes into `other`; no byte is lost.
        let many: Vec<(String, u64)> = (0..20).map(|i| (format!("u{i}"), 100 + i)).collect();
        let many: Vec<(&str, u64)> = many.iter().map(|(u, n)| (u.as_str(), *n)).collect();
        t.add(&ended(&many, 0));
        assert_eq!(t.users.len(), 9);
        assert!(t.users.contains_key("u19") && !t.users.contains_key("a"));
        let kept: u64 = t.users.values().map(|v| v.0).sum();
        let all: u64 = 4 + 2 + 7 + (100..120).sum::<u64>();
        assert_eq!(kept + t.other.0, all);
    }
}
