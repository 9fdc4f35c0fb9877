//! The agent's sync loop: for each pod bound to this box, compare what the API wants with
//! what the box shows and act. [`plan`] decides; the executor here carries it out.

pub mod plan;
pub mod status;
pub mod volumes;
