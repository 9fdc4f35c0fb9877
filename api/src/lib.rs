//! kith's Kubernetes wire layer: everything between an HTTP request from kubectl (or
//! kube-rs, helm, Prometheus) and the object store, with no Raft inside.
//!
//! Start at [`server`] (the hyper service) and [`handler`] (the generic REST verbs); kinds
//! are described once in [`kinds`], and [`store::ObjectStore`] is the only way down.

pub mod auth;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod events;
pub mod exec;
pub mod handler;
pub mod join;
pub mod kinds;
pub mod metrics;
pub mod node_metrics;
pub mod nodes;
pub mod openapi;
pub mod patch;
pub mod process_metrics;
pub mod protobuf;
pub mod remote_node;
pub mod request;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
pub mod validation;
pub mod watch;
