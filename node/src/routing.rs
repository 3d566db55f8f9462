//! What this node publishes about its routing tables so that anyone can check that every node
//! routes the same way.
//!
//! TODO: replace the body of [`ring_digest`] with a digest over the Maglev tables the data plane
//! actually built (one per pool) once `dataplane` is merged; until then it digests the inputs of
//! those tables (the config and the backend states), which is equal on two nodes exactly when they
//! have applied the same state.

use lbfleet_raft_store::state::ClusterState;

/// Hex digest of the routing inputs of `state`: FNV-1a (64-bit, fixed offset basis, so the same on
/// every node and every run) over the postcard bytes of `(config, backends)`.
pub fn ring_digest(state: &ClusterState) -> String {
    match postcard::to_allocvec(&(&state.config, &state.backends)) {
        Ok(bytes) => format!("{:016x}", fnv1a64(&bytes)),
        Err(e) => format!("unencodable: {e}"),
    }
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::command::Command;
    use lbfleet_api::config::{parse, Format};

    fn with_config(backends: &[&str]) -> ClusterState {
        let mut t = String::from("[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n");
        for b in backends {
            t += &format!("[[pool.backend]]\naddr = \"{b}\"\n");
        }
        let mut s = ClusterState::default();
        s.apply(&Command::ApplyConfig { config: parse(&t, Format::Toml).unwrap() }, 1);
        s
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn same_state_same_digest_and_a_change_shows() {
        let a = with_config(&["127.0.0.1:9001", "127.0.0.1:9002"]);
        assert_eq!(ring_digest(&a), ring_digest(&a.clone()));
        let b = with_config(&["127.0.0.1:9001"]);
        assert_ne!(ring_digest(&a), ring_digest(&b));
        let mut drained = a.clone();
        drained.apply(
            &Command::SetDrain { pool: "web".into(), backend: "127.0.0.1:9002".into(), draining: true },
            2,
        );
        assert_ne!(ring_digest(&a), ring_digest(&drained));
        assert_eq!(ring_digest(&a).len(), 16);
    }
}
