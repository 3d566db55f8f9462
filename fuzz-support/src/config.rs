//! Target `config`: config text from an operator (`lbctl apply`, the admin API) through parse and
//! validation.

use lbfleet_api::config::{parse, ClusterConfig, Format};

/// Parse `data` as TOML and as JSON. Neither may panic; a config that is accepted must come back
/// equal from its own JSON (`get config`), TOML and postcard (the Raft log) encodings.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for format in [Format::Toml, Format::Json] {
        match parse(&text, format) {
            Ok(config) => round_trips(&config, format),
            // The rejection is shown to the operator: rendering it must not panic either.
            Err(errors) => drop(errors.to_string()),
        }
    }
}

fn round_trips(config: &ClusterConfig, from: Format) {
    let json = config.to_json();
    match parse(&json, Format::Json) {
        Ok(back) => assert_eq!(&back, config, "{from:?} config changed through its JSON:\n{json}"),
        Err(e) => panic!("{from:?} config does not parse back from its JSON: {e}\n{json}"),
    }
    let toml = config.to_toml();
    match parse(&toml, Format::Toml) {
        Ok(back) => assert_eq!(&back, config, "{from:?} config changed through its TOML:\n{toml}"),
        Err(e) => panic!("{from:?} config does not parse back from its TOML: {e}\n{toml}"),
    }
    let bytes = postcard::to_allocvec(config).expect("a config encodes with postcard");
    match postcard::from_bytes::<ClusterConfig>(&bytes) {
        Ok(back) => assert_eq!(&back, config, "{from:?} config changed through postcard"),
        Err(e) => panic!("{from:?} config does not decode from its postcard bytes: {e}\n{json}"),
    }
}
