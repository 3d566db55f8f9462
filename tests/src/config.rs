//! Small valid configs that carry a marker, so a test can tell which one is in force.

use anyhow::{anyhow, Context, Result};

/// A small valid config whose single backend port encodes `marker`, so a test can tell configs apart.
pub fn marked_config(marker: u32) -> String {
    let port = 10_000 + (marker % 50_000);
    format!(
        "[[pool]]\nname = \"web\"\npolicy = \"maglev\"\n[[pool.backend]]\naddr = \"127.0.0.1:{port}\"\n\
         [pool.health]\nkind = \"none\"\n\n[[listener]]\nname = \"web\"\nprotocol = \"http\"\nport = 18080\npool = \"web\"\n"
    )
}

/// The marker a config produced by [`marked_config`] carries.
pub fn marker_of(config_json: &str) -> Result<u32> {
    let v: serde_json::Value = serde_json::from_str(config_json).context("config JSON")?;
    let addr =
        v["pool"][0]["backend"][0]["addr"].as_str().ok_or_else(|| anyhow!("no backend addr in {v}"))?;
    let port: u32 = addr.rsplit(':').next().unwrap_or("").parse()?;
    Ok(port - 10_000)
}
