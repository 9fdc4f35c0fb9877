//! The scheduler: binds pending pods to nodes.
pub mod place;
pub mod quantity;
pub mod selectors;
pub mod snapshot;

pub use place::{place, Unschedulable};
pub use snapshot::Snapshot;

#[cfg(test)]
mod tests;
