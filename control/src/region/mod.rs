//! A region: several control boxes replicating one store with Raft over mutual TLS.
//! `kith control` runs one box of it; `kith up` is the one-box form of the same program
//! (see [`crate::up`]), without a peer port.
//!
//! ```text
//!  first box:  kith control --data-dir D --listen A:6443 --peer-listen A:7443
//!              new CA, node id, one-voter Raft ─▶ serves
//!  next box:   kith control --data-dir D --listen B:6443 --peer-listen B:7443
//!                           --join https://A:6443 --token K10…
//!    1. POST https://A:6443/kith/v1/join/control (Bearer token; A's CA pinned by the token)
//!       ◀─ region bundle: CA cert+key, tokens, A's peer address        (pki::peer)
//!    2. own certificates from that CA; store opened empty, peer port serving
//!    3. POST A:7443/raft/member AddVoter{me, B:7443} ─▶ leader: learner, caught up by log
//!       or snapshot, promoted to voter                                (store::leader)
//!    4. serves the API: writes forwarded to the leader, reads linearizable via read index
//!  leave:      kith control leave --data-dir D  ─▶ own peer port: Remove{me}; the box
//!              notices it is no longer a member and stops.
//! ```
//! Controllers and the scheduler run on the leader only (`up::leader_duties`): Raft's
//! leadership is the controllers' leader election.

pub mod transport;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kith_api::join::RegionBundle;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::pki::peer::{has_credentials, install_region_bundle};
use crate::pki::{Pki, PkiError};
use crate::store::leader::{LeaderCall, LeaderReply};
use crate::store::{NodeId, RaftStore, StoreConfig, StoreOpenError};
use transport::{serve_peers, HttpsTransport};

/// Raft timers of a region. The defaults suit links of 20–200 ms round trip:
/// - openraft waits at most one heartbeat interval for an AppendEntries answer, so the
///   interval must exceed the slowest round trip plus an fsync: 250 ms;
/// - a follower that heard from a leader waits its lease (the maximum election timeout)
///   plus a random election timeout before it campaigns, and does not vote for others
///   meanwhile — that is what keeps a slow link or a slow disk from starting elections.
///   With 500–750 ms, a dead leader is replaced 1.25–1.5 s after its last heartbeat, and
///   five heartbeats in a row must be lost before a live one is doubted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    pub heartbeat_ms: u64,
    /// Elections start after a random time in [min, 1.5 × min] (after the lease).
    pub election_min_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// The most log entries one AppendEntries carries. openraft drops an AppendEntries
    /// after one heartbeat interval and sends the same batch again: a batch that can not
    /// cross the link within it is never delivered. On a 50 ms link a fresh TCP window
    /// moves some 50–70 KB in 250 ms; 300 entries of 1–3 KB each (openraft's default)
    /// did not, and a follower that had to catch up never did (kith-region-bench: the
    /// leader re-sent 8.5 MB in 30 s, no write was accepted). 16 entries fit.
    pub max_payload_entries: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            heartbeat_ms: 250,
            election_min_ms: 500,
            snapshot_every: 5000,
            max_payload_entries: 16,
        }
    }
}

/// How `kith control` joins (or founds) a region.
#[derive(Clone, Debug)]
pub struct RegionConfig {
    /// Where this box's Raft port listens; also the address the others reach it at.
    pub peer_listen: SocketAddr,
    /// An API URL of any box of the region and a join token; `None` founds a new region.
    pub join: Option<Join>,
    pub timers: Timers,
}

#[derive(Clone, Debug)]
pub struct Join {
    pub server: String,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error(
        "--peer-listen {0}: name the address the other boxes reach this one at, not 0.0.0.0 or ::"
    )]
    UnspecifiedPeerAddress(SocketAddr),
    #[error("cannot listen on {addr} for peers: {source}")]
    PeerListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("joining through {server}: {why}")]
    Join { server: String, why: String },
    #[error("the region refused to add this box: {0}")]
    NotAdded(String),
    #[error("the region refused: {0}")]
    Refused(String),
    #[error("certificates: {0}")]
    Pki(#[from] PkiError),
    #[error("store: {0}")]
    Store(#[from] StoreOpenError),
}

/// What a box remembers about its place in the region (`DATA_DIR/region.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    /// This box's Raft node id: random, never reused (a box that lost its disk comes back
    /// as a new member).
    pub node_id: NodeId,
    pub peer_addr: String,
    /// The Raft port of the box it joined through (asked again if the join was cut short).
    pub joined_through: Option<String>,
}

const MEMBERSHIP_FILE: &str = "region.json";

impl Membership {
    pub fn load(data_dir: &Path) -> Result<Option<Membership>, RegionError> {
        let path = data_dir.join(MEMBERSHIP_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| RegionError::Corrupt {
                    path,
                    why: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RegionError::Io { path, source }),
        }
    }

    fn save(&self, data_dir: &Path) -> Result<(), RegionError> {
        let path = data_dir.join(MEMBERSHIP_FILE);
        let tmp = data_dir.join(format!("{MEMBERSHIP_FILE}.tmp"));
        let io = |source| RegionError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|e| RegionError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// A new random node id (never 0, and below 2^53 so JSON readers keep it exact).
fn new_node_id() -> NodeId {
    loop {
        let id = rand::random::<u64>() & ((1 << 53) - 1);
        if id != 0 {
            return id;
        }
    }
}

/// Before the credentials are loaded: a joining box without credentials fetches the
/// region bundle and installs it; every box gets its membership record. Returns it.
pub async fn prepare(data_dir: &Path, cfg: &RegionConfig) -> Result<Membership, RegionError> {
    if cfg.peer_listen.ip().is_unspecified() {
        return Err(RegionError::UnspecifiedPeerAddress(cfg.peer_listen));
    }
    std::fs::create_dir_all(data_dir).map_err(|source| RegionError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let peer_addr = cfg.peer_listen.to_string();
    let mut membership = Membership::load(data_dir)?.unwrap_or_else(|| Membership {
        node_id: new_node_id(),
        peer_addr: peer_addr.clone(),
        joined_through: None,
    });
    membership.peer_addr = peer_addr;
    if let Some(join) = &cfg.join {
        if !has_credentials(data_dir) {
            let bundle = fetch_bundle(join).await?;
            membership.joined_through = Some(bundle.peer_addr.clone());
            install_region_bundle(data_dir, &bundle)?;
        }
    }
    membership.save(data_dir)?;
    Ok(membership)
}

/// The region bundle from `join.server`, whose CA must be the one the token pins.
async fn fetch_bundle(join: &Join) -> Result<RegionBundle, RegionError> {
    let err = |why: String| RegionError::Join {
        server: join.server.clone(),
        why,
    };
    let ca_der = kith_agent::join::fetch_pinned_ca(&join.server, &join.token)
        .await
        .map_err(|e| err(e.to_string()))?;
    let url = join
        .server
        .parse::<http::Uri>()
        .map_err(|e| err(format!("invalid URL: {e}")))?;
    let mut kcfg = kube::Config::new(url);
    kcfg.root_cert = Some(vec![ca_der]);
    let client = kube::Client::try_from(kcfg).map_err(|e| err(e.to_string()))?;
    let req = http::Request::post(kith_api::server::JOIN_CONTROL_PATH)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", join.token),
        )
        .body(Vec::new())
        .map_err(|e| err(e.to_string()))?;
    match client.request::<RegionBundle>(req).await {
        Ok(b) => Ok(b),
        Err(kube::Error::Api(s)) if s.code == 401 => Err(err(
            "the join token was refused (expired, unknown, or of another region)".into(),
        )),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(err(
            "that server does not take control boxes (a one-box `kith up`?)".into(),
        )),
        Err(e) => Err(err(e.to_string())),
    }
}

/// The store of a region box, its peer port serving, and — for a box that has just
/// joined — made a voter. The peer server stops with `shutdown`. The `Notify` fires when
/// this box is taken out of the region (see [`removed`]).
pub async fn open_store(
    pki: &Pki,
    cfg: &RegionConfig,
    membership: &Membership,
    mut store_cfg: StoreConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(Arc<RaftStore>, Arc<Notify>), RegionError> {
    let host = cfg.peer_listen.ip().to_string();
    let tls = pki.peer_tls(membership.node_id, &[host])?;
    let listener = tokio::net::TcpListener::bind(cfg.peer_listen)
        .await
        .map_err(|source| RegionError::PeerListen {
            addr: cfg.peer_listen,
            source,
        })?;
    let transport = HttpsTransport::new(tls.client.clone());
    store_cfg.node_id = membership.node_id;
    store_cfg.addr = membership.peer_addr.clone();
    store_cfg.heartbeat_ms = cfg.timers.heartbeat_ms;
    store_cfg.election_min_ms = cfg.timers.election_min_ms;
    store_cfg.election_max_ms = cfg.timers.election_min_ms * 3 / 2;
    store_cfg.snapshot_logs_since_last = cfg.timers.snapshot_every;
    store_cfg.max_payload_entries = cfg.timers.max_payload_entries;
    // A box that joins waits to be added; only the founder forms a region of its own.
    store_cfg.bootstrap = cfg.join.is_none() && membership.joined_through.is_none();
    let store = RaftStore::open_with_transport(store_cfg, Arc::new(transport.clone())).await?;
    let left = Arc::new(Notify::new());
    tokio::spawn(serve_peers(
        listener,
        tls.server,
        store.clone(),
        left.clone(),
        shutdown,
    ));
    let initialized = store
        .raft()
        .is_initialized()
        .await
        .map_err(|e| RegionError::NotAdded(e.to_string()))?;
    if !initialized {
        let through = membership
            .joined_through
            .clone()
            .ok_or_else(|| RegionError::NotAdded("this box has no region to join".into()))?;
        add_self(&transport, &through, membership).await?;
        tracing::info!(node = membership.node_id, "joined the region as a voter");
    }
    // A box that just joined (empty) or restarted (behind) would answer from an old state:
    // serve once caught up. Without a quorum that cannot be known; the box then serves
    // anyway, refusing writes and linearizable reads until the region is back.
    if let Err(e) = store.catch_up().await {
        tracing::warn!(error = %e, "could not catch up with the region; serving what this box has");
    }
    Ok((store, left))
}

/// Ask the box at `through` (its Raft port) to make this box a voter; retried while the
/// region elects a leader or `through` restarts.
async fn add_self(
    transport: &HttpsTransport,
    through: &str,
    me: &Membership,
) -> Result<(), RegionError> {
    let call = LeaderCall::AddVoter {
        id: me.node_id,
        addr: me.peer_addr.clone(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let why = match transport.member_call(through, &call).await {
            Ok(LeaderReply::Changed { .. }) => return Ok(()),
            Ok(LeaderReply::Failed(e)) => e.to_string(),
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() > deadline {
            return Err(RegionError::NotAdded(why));
        }
        tracing::info!(through, %why, "asking to be added again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// This box's membership record and a transport with a peer certificate of its own (for
/// the `kith control` commands run beside a running box).
fn local_peer(data_dir: &Path) -> Result<(Membership, HttpsTransport), RegionError> {
    let membership = Membership::load(data_dir)?.ok_or_else(|| RegionError::Corrupt {
        path: data_dir.join(MEMBERSHIP_FILE),
        why: "not a control box of a region (no region.json)".into(),
    })?;
    let pki = Pki::load_or_create(data_dir, &[])?;
    let tls = pki.peer_tls(membership.node_id, &[])?;
    Ok((membership, HttpsTransport::new(tls.client)))
}

/// `kith control leave [--node-id ID]`: ask this box's own peer port to take this box (or
/// the member `node`, e.g. a box that lost its disk) out of the region.
pub async fn leave(data_dir: &Path, node: Option<NodeId>) -> Result<NodeId, RegionError> {
    let (membership, transport) = local_peer(data_dir)?;
    let id = node.unwrap_or(membership.node_id);
    let call = LeaderCall::Remove { id };
    match transport.member_call(&membership.peer_addr, &call).await {
        Ok(LeaderReply::Changed { .. }) => Ok(id),
        Ok(LeaderReply::Failed(e)) => Err(RegionError::Refused(e.to_string())),
        Ok(other) => Err(RegionError::Refused(format!("unexpected answer {other:?}"))),
        Err(e) => Err(RegionError::Refused(e.to_string())),
    }
}

/// `kith control members`: the region's members as this (running) box sees them.
pub async fn members(data_dir: &Path) -> Result<transport::Members, RegionError> {
    let (membership, transport) = local_peer(data_dir)?;
    transport
        .members(&membership.peer_addr)
        .await
        .map_err(|e| RegionError::Refused(e.to_string()))
}

/// The members as a table: id, Raft address, role (pure).
pub fn members_table(m: &transport::Members) -> String {
    let mut out = format!("{:<18} {:<24} {}\n", "NODE ID", "PEER ADDRESS", "ROLE");
    for (id, addr) in &m.members {
        let mut role = if m.leader == Some(*id) {
            "leader".to_string()
        } else if m.voters.contains(id) {
            "voter".to_string()
        } else {
            "learner".to_string()
        };
        if *id == m.me {
            role.push_str(" (this box)");
        }
        out.push_str(&format!("{id:<18} {addr:<24} {role}\n"));
    }
    out
}

/// Resolves once this box, having been a member, is no longer one (it left through its
/// peer port, or its Raft applied a membership without it): the box then stops instead
/// of serving a region it is not part of.
pub async fn removed(store: Arc<RaftStore>, left: Arc<Notify>) {
    tokio::select! {
        _ = left.notified() => {
            tracing::warn!(node = store.node_id(), "this box left the region");
        }
        _ = not_in_membership(store.clone()) => {}
    }
}

async fn not_in_membership(store: Arc<RaftStore>) {
    let me = store.node_id();
    let mut rx = store.raft().metrics();
    let mut was_member = false;
    loop {
        let member = {
            let m = rx.borrow_and_update();
            let found = m
                .membership_config
                .membership()
                .nodes()
                .any(|(id, _)| *id == me);
            found
        };
        if member {
            was_member = true;
        } else if was_member {
            tracing::warn!(node = me, "this box is no longer a member of the region");
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_table_names_roles() {
        let m = transport::Members {
            me: 2,
            leader: Some(1),
            members: [
                (1, "10.0.0.1:7443".to_string()),
                (2, "10.0.0.2:7443".into()),
                (3, "10.0.0.3:7443".into()),
            ]
            .into(),
            voters: vec![1, 2],
        };
        let t = members_table(&m);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE ID"));
        assert!(
            lines[1].starts_with("1 ") && lines[1].ends_with("leader"),
            "{t}"
        );
        assert!(lines[2].ends_with("voter (this box)"), "{t}");
        assert!(lines[3].ends_with("learner"), "{t}");
    }

    #[test]
    fn node_ids_are_nonzero_and_json_exact() {
        for _ in 0..1000 {
            let id = new_node_id();
            assert!(id != 0 && id < (1 << 53));
        }
    }
}
