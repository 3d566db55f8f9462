//! lbfleet-node: the lbnode daemon.
