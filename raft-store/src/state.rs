//! The replicated state and its deterministic `apply`.
