//! openapi (being written).
