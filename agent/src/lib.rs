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
