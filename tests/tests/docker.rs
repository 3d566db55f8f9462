//! The docker compose cluster, for real: the image is built from this workspace's binaries
//! (`docker/build-image.sh`, FROM scratch, no registry), `docker/compose-3.yml` starts three lbnodes and
//! three demo backends on 172.28.0.0/24 with the certificates and tokens its one-shot `certs` service
//! makes, the leader's container is killed, and a new leader takes over.
//!
//! Skipped with a notice where no docker engine answers.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lbfleet_tests::admin::{self, Admin, Bearer};
use lbfleet_tests::compose::{self, docker_available, repo_root};
use lbfleet_tests::{http_get, pb, wait_until};

const PROJECT: &str = "lbfleet-e2e";

fn compose(args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new("docker-compose")
        .current_dir(repo_root())
        .args(["-f", "docker/compose-3.yml", "-p", PROJECT])
        .args(args)
        .output()
        .context("run docker-compose")?;
    Ok(out)
}

/// An admin client of the compose cluster, with the CA and admin token its `certs` service made in
/// docker/certs.
async fn compose_admin(addr: &str) -> Result<Admin> {
    let certs = repo_root().join("docker/certs");
    let ca = std::fs::read(certs.join("ca.pem")).context("docker/certs/ca.pem")?;
    let token = std::fs::read_to_string(certs.join("admin.token")).context("docker/certs/admin.token")?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name(lbfleet_tests::creds::SERVER_NAME);
    let ch = admin::channel_with(addr, Duration::from_secs(10), tls).await?;
    Ok(pb::admin_client::AdminClient::with_interceptor(ch, Bearer::of(token.trim())))
}

/// Tears the compose project down (containers, network, volumes) even when the test fails.
struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let _ = compose(&["down", "-v", "--timeout", "5"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_forms_routes_consistently_and_fails_over() -> Result<()> {
    if !docker_available() {
        println!("NOTICE: no docker engine or docker-compose here; skipping the compose cluster test");
        return Ok(());
    }
    // Same profile as this test binary, so CI builds nothing twice.
    compose::build_image(compose::profile())?;

    let _ = compose(&["down", "-v", "--timeout", "5"]);
    let _down = Down;
    let up = compose(&["up", "-d"])?;
    ensure!(up.status.success(), "compose up failed: {}", String::from_utf8_lossy(&up.stderr));

    let nodes = ["172.28.0.11", "172.28.0.12", "172.28.0.13"];
    // The apply-config container applies docker/demo.toml once the nodes are healthy.
    wait_until("the demo config on every node", Duration::from_secs(90), || async {
        for ip in nodes {
            let mut c = compose_admin(&format!("{ip}:7400")).await?;
            let got = c.get_config(pb::GetConfigRequest { stale: true }).await?.into_inner();
            ensure!(got.version >= 1, "node {ip} has no config yet");
        }
        Ok(())
    })
    .await?;

    // One client (this host, one source IP) reaches the same backend through every node.
    let mut seen = Vec::new();
    for ip in nodes {
        let (status, headers, _) = wait_until("the web listener", Duration::from_secs(30), || async {
            let r = http_get(&format!("{ip}:8080"), "/", &[]).await?;
            ensure!(r.0 == 200, "status {}", r.0);
            Ok(r)
        })
        .await?;
        ensure!(status == 200);
        seen.push(lbfleet_tests::header(&headers, "x-backend"));
    }
    ensure!(seen.iter().all(|b| b == &seen[0]) && !seen[0].is_empty(), "nodes disagree: {seen:?}");

    // Kill the leader's container; the other two elect a new leader and keep serving.
    let st = compose_admin("172.28.0.12:7400").await?.status(pb::StatusRequest {}).await?.into_inner();
    let leader = st.leader.context("a leader")?;
    let killed = Command::new("docker").args(["kill", &format!("{PROJECT}_lbnode-{leader}_1")]).output()?;
    ensure!(killed.status.success(), "docker kill: {}", String::from_utf8_lossy(&killed.stderr));
    let survivor = nodes[if leader == 1 { 1 } else { 0 }];
    let new = wait_until("a new leader", Duration::from_secs(30), || async {
        let mut c = compose_admin(&format!("{survivor}:7400")).await?;
        let st = c.local_status(pb::LocalStatusRequest {}).await?.into_inner();
        match st.leader {
            Some(l) if l != leader => Ok(l),
            other => anyhow::bail!("leader {other:?}"),
        }
    })
    .await?;
    println!("container of leader {leader} killed; node {new} leads");
    let (status, _, _) = http_get(&format!("{survivor}:8080"), "/", &[]).await?;
    ensure!(status == 200, "the survivor still serves");
    Ok(())
}
