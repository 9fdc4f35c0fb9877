//! One API client over several control boxes: the agent talks to one box at a time and
//! moves to the next when that box cannot serve it.
//!
//! ```text
//!  kube::Client ─► Failover ─┬─► transport to box 0   (current)
//!                            ├─► transport to box 1
//!                            └─► transport to box 2
//!  connect error / TLS handshake failure / 503 ─► step(): next box; the same request is
//!  sent there at once when its body can be replayed, until every box was tried once
//! ```
//!
//! A box that is unreachable or that lost its quorum (503) is skipped; any other answer,
//! errors included, is the box's answer. Watches that break are restarted by their
//! watcher, and their next request lands on the box [`step`] chose.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;

/// How long to wait for a box to accept a connection before trying the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unused connection to a box stays open, and how many unused ones are kept.
/// kube's own client keeps every connection a burst opened (no pool timer, no cap): 20
/// pods starting at once left ~45 idle TLS connections in the agent for good, ~2 MiB of
/// buffers and TLS state (heaptrack). The agent's steady traffic needs a few; watches
/// hold their own connections and are not idle.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const POOL_MAX_IDLE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("no API server given")]
    NoServers,
    #[error("the API server {server}: {source}")]
    Client { server: String, source: kube::Error },
}

/// What one box did with a request, as far as choosing a box is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (success or an error of the request's own): stay with it.
    Answered,
    /// No connection: refused, timed out, or the TLS handshake failed. The request was
    /// never sent.
    Unreachable,
    /// It answered 503: it cannot serve now (e.g. it lost its quorum).
    Unavailable,
}

/// Where the next request goes, and whether this one is sent again there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub next: usize,
    pub retry: bool,
}

/// After box `used` of `servers` gave `outcome` to a request already sent to `tried`
/// boxes: the box for the next request, and whether to resend this one now (only when
/// its body can be replayed and some box has not seen it yet).
pub fn step(outcome: Outcome, used: usize, tried: usize, servers: usize, replayable: bool) -> Step {
    match outcome {
        Outcome::Answered => Step {
            next: used,
            retry: false,
        },
        Outcome::Unreachable | Outcome::Unavailable => Step {
            next: (used + 1) % servers.max(1),
            retry: replayable && tried < servers,
        },
    }
}

/// The outcome of one attempt.
pub fn outcome(result: &Result<Response<Body>, kube::Error>) -> Outcome {
    match result {
        Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
        Ok(_) => Outcome::Answered,
        Err(e) if unreachable(e) => Outcome::Unreachable,
        Err(_) => Outcome::Answered,
    }
}

/// Whether the error happened while connecting (TCP or TLS), before anything was sent.
fn unreachable(e: &kube::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper_util::client::legacy::Error>() {
            return h.is_connect();
        }
        cause = c.source();
    }
    false
}

struct Server {
    url: String,
    client: kube::Client,
}

struct Inner {
    servers: Vec<Server>,
    current: AtomicUsize,
}

/// A tower service sending each request to the current box (see the module doc).
#[derive(Clone)]
pub struct Failover {
    inner: Arc<Inner>,
}

impl Failover {
    /// One transport per config, in order of preference. Each config's own retries are
    /// turned off (a 503 means: ask another box) and its connect timeout bounded.
    pub fn new(configs: Vec<kube::Config>) -> Result<Failover, FailoverError> {
        if configs.is_empty() {
            return Err(FailoverError::NoServers);
        }
        let servers = configs
            .into_iter()
            .map(|mut cfg| {
                let url = cfg.cluster_url.to_string();
                cfg.default_retry = false;
                cfg.connect_timeout = Some(CONNECT_TIMEOUT);
                transport(cfg)
                    .map(|client| Server {
                        url: url.clone(),
                        client,
                    })
                    .map_err(|source| FailoverError::Client {
                        server: url,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Failover {
            inner: Arc::new(Inner {
                servers,
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// The URL requests go to now.
    pub fn current(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed);
        &self.inner.servers[i].url
    }

    async fn send(inner: Arc<Inner>, req: Request<Body>) -> Result<Response<Body>, kube::Error> {
        let n = inner.servers.len();
        let (parts, mut body) = req.into_parts();
        let mut used = inner.current.load(Ordering::Relaxed);
        let mut tried = 0;
        loop {
            let (this_body, replayable) = match body.try_clone() {
                Some(copy) => (copy, true),
                None => (std::mem::replace(&mut body, Body::empty()), false),
            };
            let mut attempt = Request::new(this_body);
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.version_mut() = parts.version;
            *attempt.headers_mut() = parts.headers.clone();
            let result = inner.servers[used].client.send(attempt).await;
            tried += 1;
            let got = outcome(&result);
            let s = step(got, used, tried, n, replayable);
            if s.next != used {
                // Only the request that saw the failure moves everyone on; concurrent
                // failures of the same box move the pointer once.
                if inner
                    .current
                    .compare_exchange(used, s.next, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    tracing::warn!(
                        from = %inner.servers[used].url,
                        to = %inner.servers[s.next].url,
                        outcome = ?got,
                        "API server failed over"
                    );
                }
            }
            if !s.retry {
                return result;
            }
            used = s.next;
        }
    }
}

/// A client of one box: the stack `kube::Client::try_from(cfg)` builds (base URI, auth,
/// extra headers, rustls, kube's connect/read/write timeouts; retries are off here) over a
/// connection pool that closes idle connections ([`POOL_IDLE_TIMEOUT`], [`POOL_MAX_IDLE`]).
/// kube's HTTP tracing layer is left out (debug spans only).
fn transport(cfg: kube::Config) -> Result<kube::Client, kube::Error> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use kube::client::ConfigExt as _;
    use tower::ServiceBuilder;

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = cfg.rustls_https_connector_with_connector(http)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(cfg.connect_timeout);
    connector.set_read_timeout(cfg.read_timeout);
    connector.set_write_timeout(cfg.write_timeout);
    connector.set_reset_reader_on_write(cfg.reset_reader_on_write);
    let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(cfg.base_uri_layer())
        .option_layer(cfg.auth_layer()?)
        .layer(cfg.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(pool);
    Ok(kube::Client::new(service, cfg.default_namespace))
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(Self::send(Arc::clone(&self.inner), req))
    }
}

/// A kube client over `configs` (the first is preferred), failing over between them.
pub fn client(configs: Vec<kube::Config>) -> Result<kube::Client, FailoverError> {
    let namespace = configs
        .first()
        .map(|c| c.default_namespace.clone())
        .ok_or(FailoverError::NoServers)?;
    Ok(kube::Client::new(Failover::new(configs)?, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_table() {
        use Outcome::*;
        // (outcome, used, tried, servers, replayable) → (next, retry)
        let cases = [
            ((Answered, 0, 1, 3, true), (0, false)),
            ((Answered, 2, 3, 3, true), (2, false)),
            ((Unreachable, 0, 1, 3, true), (1, true)),
            ((Unreachable, 2, 1, 3, true), (0, true)),
            ((Unavailable, 1, 2, 3, true), (2, true)),
            // Every box has seen it: give the last answer back.
            ((Unreachable, 2, 3, 3, true), (0, false)),
            // A streamed body cannot be sent twice; the next request moves on.
            ((Unreachable, 0, 1, 3, false), (1, false)),
            // One box: nowhere else to go.
            ((Unreachable, 0, 1, 1, true), (0, false)),
            ((Unavailable, 0, 1, 1, true), (0, false)),
            ((Unavailable, 0, 1, 2, true), (1, true)),
        ];
        for ((o, used, tried, n, replay), (next, retry)) in cases {
            assert_eq!(
                step(o, used, tried, n, replay),
                Step { next, retry },
                "{o:?} used={used} tried={tried} n={n} replayable={replay}"
            );
        }
    }

    #[test]
    fn outcome_table() {
        let status = |code: u16| {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            Ok(r)
        };
        assert_eq!(outcome(&status(200)), Outcome::Answered);
        assert_eq!(outcome(&status(404)), Outcome::Answered);
        assert_eq!(outcome(&status(500)), Outcome::Answered);
        assert_eq!(outcome(&status(503)), Outcome::Unavailable);
        let not_connect = kube::Error::Service("some middleware failed".into());
        assert_eq!(outcome(&Err(not_connect)), Outcome::Answered);
    }
}
