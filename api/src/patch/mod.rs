//! Patch (being written).
