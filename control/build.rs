//! Links the `kith` binary as a fixed-address (non-PIE) executable.
//!
//! Every `kith shim` (one per container) and the agent run this same binary. Built as a PIE,
//! its pointer tables (`.data.rel.ro`, `.got`: about 1.2 MiB) are relocated at start-up and so
//! become private dirty memory in each process, and the dynamic loader first reads 2 MiB of
//! relocation entries. Linked at a fixed address there is nothing to relocate: those pages
//! stay shared, clean file pages. The main binary loses address randomisation (libraries,
//! heap, stacks and mmaps keep theirs) — the trade Go makes by default for kubelet,
//! containerd's shims and etcd.
//!
//! Only the link step changes: the code is still compiled position-independent, which a
//! fixed-address executable may contain.

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
