//! In-process controllers of the control plane. Each keeps its decision in a pure
//! function tested by tables and a thin loop that carries it out.

pub mod namespace;
