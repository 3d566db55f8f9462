//! lbfleet-node: the lbnode daemon.
pub mod dataplane;
