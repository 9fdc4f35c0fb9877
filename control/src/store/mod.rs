//! Raft store (being written).
