//! kith's control plane: the Raft-replicated object store, the certificates of a region,
//! and the `kith` command that runs them.

pub mod apiservers;
pub mod client;
pub mod controllers;
pub use kith_api::events;
pub mod metrics;
pub mod mirror;
pub mod pki;
pub mod region;
pub mod scheduler;
pub mod store;
pub mod up;
