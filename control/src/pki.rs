//! Certificates and credentials (being written).
