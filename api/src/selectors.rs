//! selectors (being written).
