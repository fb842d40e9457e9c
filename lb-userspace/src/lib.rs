//! lb userspace: the node agent's library and the pieces `lbctl` shares with it.
//!
//! Data flows one way: `source` (Kubernetes or manifests) → `model` (pure) → `dataplane` (the
//! kernel maps and programs).
pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod health;
pub mod metrics;
pub mod model;
pub mod source;
