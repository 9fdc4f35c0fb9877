//! kith agent: runs the pods bound to its box as real OCI containers.
//!
//! ```text
//!  API (watch pods on this node) ──► sync::plan(desired, observed) ──► actions
//!                                         │
//!      image  (pull, content store, unpack) ─┤
//!      spec   (pod spec → OCI runtime spec)  ─┤
//!      runtime (trait ContainerRuntime; `kith shim` per container, libcontainer)
//! ```
//! Start with `sync` for the decisions and `runtime` for how a container runs.
//! `join` and `failover` are how it reaches the control plane (any of several boxes),
//! `node_server` how the API server reaches it (logs, exec, stats over mutual TLS).

pub mod failover;
pub mod image;
pub mod join;
pub mod network;
pub mod node;
pub mod node_server;
pub mod run;
pub mod runtime;
pub mod server;
pub mod spec;
pub mod stats;
pub mod sync;
