//! What only the leader can do, asked of it by any node: writes, read indexes and
//! membership changes. A follower sends the call to the leader it knows of; the leader
//! answers it with its own Raft (`serve`). The follower then waits until its own state
//! machine has applied what the leader reported, so a client that wrote through (or read
//! from) a follower sees its write there too.
//!
//! ```text
//!  follower                                        leader
//!  call(Write(ops)) ──transport.leader──────────▶ serve: raft.client_write(ops)
//!       ◀──────────── Written{index, results} ────┘
//!  wait applied ≥ index, then answer the writers
//!
//!  call(ReadIndex) ──────────────────────────────▶ serve: raft.ensure_linearizable()
//!       ◀──────────── ReadIndex(i) ───────────────┘ (leadership confirmed by a quorum)
//!  wait applied ≥ i, then read locally
//! ```
//!
//! While no leader is known (an election) or the known one does not answer, the call is
//! retried until its deadline; a node cut off from the majority therefore refuses with
//! `Unavailable` (503) once the deadline passes, never with a stale answer. A write whose
//! message may have reached the leader is never re-sent: its fate is unknown, and saying
//! so (503 "may still be applied") is honest, while sending it twice is not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kith_api::store::{Result, StoreError, WriteOp};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::network::{RaftTransport, TransportError};
use super::{KithRaft, NodeId, Replies};

/// A call only the leader answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LeaderCall {
    /// Append these writes as one entry, unless the leader's clock is past `expires_ms`
    /// (Unix milliseconds): by then the writers were told their writes failed, and a
    /// message held up in a broken link must not apply them behind their backs.
    Write { ops: Vec<WriteOp>, expires_ms: u64 },
    /// The log index a linearizable read must wait for.
    ReadIndex,
    /// Make `id` (reachable at `addr`) a voter: a learner first, caught up, then promoted.
    AddVoter { id: NodeId, addr: String },
    /// Take `id` out of the membership altogether.
    Remove { id: NodeId },
}

impl LeaderCall {
    /// A write that expires `timeout` from now.
    pub fn write(ops: Vec<WriteOp>, timeout: Duration) -> LeaderCall {
        LeaderCall::Write {
            ops,
            expires_ms: unix_ms().saturating_add(timeout.as_millis() as u64),
        }
    }
}

/// Now, in Unix milliseconds (the region's boxes keep their clocks in step, as any
/// TLS-speaking box must; a skew only shifts when a late write is refused).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The leader's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LeaderReply {
    /// The writes' entry is committed and applied at `index` on the leader.
    Written {
        index: u64,
        results: Replies,
    },
    ReadIndex(u64),
    /// The membership change is committed (at `index`).
    Changed {
        index: u64,
    },
    /// The receiver is not the leader (any more); it names the leader if it knows one.
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The leader could not do it.
    Failed(StoreError),
}

/// Who this node believes leads, with the address its peers reach it at.
pub fn known_leader(raft: &KithRaft) -> Option<(NodeId, BasicNode)> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let id = m.current_leader?;
    let node = m.membership_config.membership().get_node(&id).cloned()?;
    Some((id, node))
}

/// Why this node (`me`) must not take forwarded writes now, if it must not: it does not
/// lead, or the writes' deadline has passed.
pub fn refuse_forwarded(raft: &KithRaft, me: NodeId, expires_ms: u64) -> Option<LeaderReply> {
    let leading = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(me) && m.state.is_leader()
    };
    if !leading {
        let known = known_leader(raft);
        return Some(LeaderReply::NotLeader {
            leader_id: known.as_ref().map(|(id, _)| *id),
            leader_addr: known.map(|(_, n)| n.addr),
        });
    }
    expired(expires_ms)
}

/// The refusal of writes whose deadline (`expires_ms`) has passed, if it has.
fn expired(expires_ms: u64) -> Option<LeaderReply> {
    (unix_ms() > expires_ms).then(|| {
        LeaderReply::Failed(StoreError::Unavailable(
            "the write reached the leader after its deadline; not applied".into(),
        ))
    })
}

/// Answer `call` with this node's Raft (the receiving side of [`RaftTransport::leader`]).
pub async fn serve(raft: &KithRaft, call: LeaderCall) -> LeaderReply {
    match call {
        LeaderCall::Write { ops, expires_ms } => {
            if let Some(refused) = expired(expires_ms) {
                return refused;
            }
            match raft.client_write(ops).await {
                Ok(resp) => LeaderReply::Written {
                    index: resp.log_id.index,
                    results: resp.data,
                },
                Err(e) => write_refused(e),
            }
        }
        LeaderCall::ReadIndex => match raft.ensure_linearizable().await {
            Ok(log_id) => LeaderReply::ReadIndex(log_id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                LeaderReply::NotLeader {
                    leader_id: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            Err(e) => LeaderReply::Failed(super::read_error(e)),
        },
        LeaderCall::AddVoter { id, addr } => add_voter(raft, id, addr).await,
        LeaderCall::Remove { id } => remove(raft, id).await,
    }
}

fn write_refused(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> LeaderReply {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => LeaderReply::NotLeader {
            leader_id: f.leader_id,
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        e => LeaderReply::Failed(super::write_error(e)),
    }
}

async fn add_voter(raft: &KithRaft, id: NodeId, addr: String) -> LeaderReply {
    let (voters, learners) = members(raft);
    if voters.contains(&id) {
        let index = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        return LeaderReply::Changed { index };
    }
    if !learners.contains(&id) {
        // Blocking: returns once the learner has caught up (by log or by snapshot), so the
        // promotion below never makes a voter that stalls the quorum while it catches up.
        if let Err(e) = raft.add_learner(id, BasicNode::new(addr), true).await {
            return write_refused(e);
        }
    }
    match raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
    {
        Ok(resp) => LeaderReply::Changed {
            index: resp.log_id.index,
        },
        Err(e) => write_refused(e),
    }
}

async fn remove(raft: &KithRaft, id: NodeId) -> LeaderReply {
    let (voters, learners) = members(raft);
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return LeaderReply::Failed(StoreError::Internal(
                "cannot remove the last voter of the region".into(),
            ));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else if learners.contains(&id) {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    } else {
        let index = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        return LeaderReply::Changed { index };
    };
    // `retain: false`: a removed voter does not linger as a learner.
    match raft.change_membership(change, false).await {
        Ok(resp) => LeaderReply::Changed {
            index: resp.log_id.index,
        },
        Err(e) => write_refused(e),
    }
}

/// Voter ids and learner ids of the effective membership.
pub fn members(raft: &KithRaft) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    (voters, learners)
}

/// Every member (voters and learners) with its peer address.
pub fn member_addrs(raft: &KithRaft) -> BTreeMap<NodeId, String> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect()
}

/// What to do after one attempt at a call (pure: the retry policy).
#[derive(Debug, PartialEq)]
pub enum Next {
    Done(LeaderReply),
    /// Try again after a pause (no leader known, or it did not get the message).
    Retry(String),
    /// Give up now with this error.
    Fail(StoreError),
}

/// Decide after an attempt: `sent` is false when the message surely never reached a
/// leader (no leader known, connection refused), so even a write may be retried.
pub fn after_attempt(
    call: &LeaderCall,
    outcome: std::result::Result<LeaderReply, TransportError>,
) -> Next {
    match outcome {
        Ok(LeaderReply::NotLeader {
            leader_id,
            leader_addr,
        }) => Next::Retry(match (leader_id, leader_addr) {
            (Some(id), Some(addr)) => format!("leadership moved to {id} at {addr}"),
            (Some(id), None) => format!("leadership moved to {id}"),
            _ => "no leader is known (election in progress)".into(),
        }),
        Ok(reply) => Next::Done(reply),
        Err(e @ TransportError::Unreachable { .. }) => Next::Retry(e.to_string()),
        Err(e @ TransportError::Lost { .. }) => match call {
            // Resending could apply the writes twice.
            LeaderCall::Write { .. } => Next::Fail(StoreError::Unavailable(format!(
                "the leader of the region did not answer this box ({e}); the write may still be applied"
            ))),
            _ => Next::Retry(e.to_string()),
        },
        Err(e @ TransportError::Remote { .. }) => Next::Retry(e.to_string()),
    }
}

/// Pause between attempts: long enough for an election to finish, short enough that a
/// client barely notices a leader change.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Make `call` reach the leader — this node itself when it leads — and return its reply,
/// retrying through elections until `timeout`.
pub async fn call(
    me: NodeId,
    raft: &KithRaft,
    transport: &Arc<dyn RaftTransport>,
    call: LeaderCall,
    timeout: Duration,
) -> Result<LeaderReply> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = match known_leader(raft) {
            Some((id, node)) => {
                let answer = async {
                    if id == me {
                        Ok(serve(raft, call.clone()).await)
                    } else {
                        transport.leader(id, &node, call.clone()).await
                    }
                };
                match tokio::time::timeout(remaining, answer).await {
                    Ok(r) => r,
                    Err(_) => Err(TransportError::Lost {
                        target: id,
                        reason: format!("no answer within {}ms", timeout.as_millis()),
                    }),
                }
            }
            None => Err(TransportError::Unreachable {
                target: 0,
                reason: "no leader is known (election in progress)".into(),
            }),
        };
        match after_attempt(&call, attempt) {
            Next::Done(reply) => return Ok(reply),
            Next::Fail(e) => return Err(e),
            Next::Retry(why) if Instant::now() + RETRY_PAUSE >= deadline => {
                return Err(StoreError::Unavailable(format!(
                    "no leader answered within {}ms ({why}); is a majority of the region reachable?",
                    timeout.as_millis()
                )));
            }
            Next::Retry(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

/// Wait until this node has applied `index` (a follower catching up to what the leader
/// reported), or fail as unavailable at `timeout`.
pub async fn applied(raft: &KithRaft, index: u64, timeout: Duration) -> Result<()> {
    raft.wait(Some(timeout))
        .applied_index_at_least(Some(index), "catch up to the leader")
        .await
        .map(|_| ())
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "committed, but this box has not applied it yet (catching up): {e}"
            ))
        })
}

/// A write's per-op results from a reply, or why there are none.
pub fn written(reply: LeaderReply) -> std::result::Result<(u64, Vec<Result<Bytes>>), StoreError> {
    match reply {
        LeaderReply::Written { index, results } => Ok((index, results.0)),
        LeaderReply::Failed(e) => Err(e),
        other => Err(StoreError::Internal(format!(
            "the leader answered a write with {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> TransportError {
        TransportError::Unreachable {
            target: 2,
            reason: "connection refused".into(),
        }
    }

    fn lost() -> TransportError {
        TransportError::Lost {
            target: 2,
            reason: "connection reset".into(),
        }
    }

    #[test]
    fn retry_policy_table() {
        let write = LeaderCall::write(Vec::new(), Duration::from_secs(1));
        let read = LeaderCall::ReadIndex;
        let not_leader = LeaderReply::NotLeader {
            leader_id: Some(3),
            leader_addr: Some("10.0.0.3:7443".into()),
        };
        let written = LeaderReply::Written {
            index: 7,
            results: Replies::default(),
        };
        type Case = (
            &'static str,
            LeaderCall,
            std::result::Result<LeaderReply, TransportError>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            ("answered", write.clone(), Ok(written.clone()), "done"),
            ("moved", write.clone(), Ok(not_leader.clone()), "retry"),
            ("refused conn", write.clone(), Err(unreachable()), "retry"),
            ("lost write", write.clone(), Err(lost()), "fail"),
            ("lost read", read.clone(), Err(lost()), "retry"),
            ("read moved", read.clone(), Ok(not_leader), "retry"),
            (
                "failed",
                read,
                Ok(LeaderReply::Failed(StoreError::Unavailable("q".into()))),
                "done",
            ),
        ];
        for (name, call, outcome, want) in cases {
            let got = match after_attempt(&call, outcome) {
                Next::Done(_) => "done",
                Next::Retry(_) => "retry",
                Next::Fail(e) => {
                    assert!(
                        e.to_string().contains("may still be applied"),
                        "{name}: {e}"
                    );
                    "fail"
                }
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn calls_and_replies_survive_the_wire() {
        let calls = vec![
            LeaderCall::ReadIndex,
            LeaderCall::AddVoter {
                id: 9,
                addr: "10.0.0.9:7443".into(),
            },
            LeaderCall::Remove { id: 9 },
        ];
        for c in calls {
            let back: LeaderCall =
                serde_json::from_slice(&serde_json::to_vec(&c).expect("ser")).expect("de");
            assert_eq!(back, c);
        }
        let replies = vec![
            LeaderReply::ReadIndex(12),
            LeaderReply::Changed { index: 4 },
            LeaderReply::NotLeader {
                leader_id: None,
                leader_addr: None,
            },
            LeaderReply::Failed(StoreError::Unavailable("x".into())),
            LeaderReply::Written {
                index: 3,
                results: Replies(vec![Ok(Bytes::from_static(b"{}"))]),
            },
        ];
        for r in replies {
            let back: LeaderReply =
                serde_json::from_slice(&serde_json::to_vec(&r).expect("ser")).expect("de");
            assert_eq!(back, r);
        }
    }

    #[test]
    fn written_table() {
        assert_eq!(
            written(LeaderReply::Written {
                index: 5,
                results: Replies(vec![Ok(Bytes::from_static(b"a"))])
            }),
            Ok((5, vec![Ok(Bytes::from_static(b"a"))]))
        );
        assert_eq!(
            written(LeaderReply::Failed(StoreError::AlreadyExists)),
            Err(StoreError::AlreadyExists)
        );
        assert!(matches!(
            written(LeaderReply::ReadIndex(1)),
            Err(StoreError::Internal(_))
        ));
    }
}
