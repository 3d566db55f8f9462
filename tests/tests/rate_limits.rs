//! A fleet-wide rate limit on a real 3-node cluster: each node admits its share of the budget
//! (divided by the live nodes of the committed membership), and the share grows on every survivor
//! once a killed node is marked down by the leader.
//!
//! The limit: 1 request per second and a burst of 30 for the whole fleet, one bucket per listener
//! (`per = "listener"`), so each of 3 nodes holds a burst of 10 refilled at 1/3 per second, and each
//! of 2 nodes a burst of 15 refilled at 1/2 per second. A burst is counted by sending requests until
//! the first 429; the bucket may refill during that count, which the bounds allow for.
//!
//! Meanwhile an unlimited listener of the same nodes keeps serving, and a config over a limit is
//! refused and leaves the old one in force.
//!
//! Addresses: nodes on 127.0.170.11–13 (the harness's layout), a demo backend on 127.0.170.101:9001.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use lbfleet_tests::{admin, header, http_get, loopback_ok, wait_until, BackendProc, Cluster};

const NET: u8 = 170;
const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);
/// Three missed probes a second apart, a commit, and slack for a loaded machine.
const MARKED: Duration = Duration::from_secs(60);
/// Listeners `a` and `b` carry the same fleet-wide limit; `plain` has none (for readiness).
const A_PORT: u16 = 18170;
const B_PORT: u16 = 18171;
const PLAIN_PORT: u16 = 18172;
const FLEET_BURST: u32 = 30;

fn config(backend: &str) -> String {
    let limit = format!(
        "[listener.admission.rate_limit]\nrate = 1\nburst = {FLEET_BURST}\nper = \"listener\"\nscope = \"fleet\"\n"
    );
    format!(
        "[[pool]]\nname = \"web\"\npolicy = \"round_robin\"\n[[pool.backend]]\naddr = \"{backend}\"\n\
         [pool.health]\nkind = \"none\"\n\n\
         [[listener]]\nname = \"a\"\nprotocol = \"http\"\nport = {A_PORT}\npool = \"web\"\n{limit}\n\
         [[listener]]\nname = \"b\"\nprotocol = \"http\"\nport = {B_PORT}\npool = \"web\"\n{limit}\n\
         [[listener]]\nname = \"plain\"\nprotocol = \"http\"\nport = {PLAIN_PORT}\npool = \"web\"\n"
    )
}

/// What one burst of requests to `addr` got: the number admitted before the first 429, how long
/// that took, and the 429 (its `Retry-After` and body).
struct Burst {
    admitted: u32,
    took: Duration,
    retry_after: String,
    body: String,
}

async fn burst(addr: &str) -> Result<Burst> {
    let start = Instant::now();
    let mut admitted = 0;
    for _ in 0..200 {
        let (status, headers, body) = http_get(addr, "/", &[]).await?;
        match status {
            200 => admitted += 1,
            429 => {
                return Ok(Burst {
                    admitted,
                    took: start.elapsed(),
                    retry_after: header(&headers, "retry-after"),
                    body: String::from_utf8_lossy(&body).into_owned(),
                })
            }
            other => return Err(anyhow!("{addr} answered {other}: {}", String::from_utf8_lossy(&body))),
        }
    }
    Err(anyhow!("{addr} admitted 200 requests without a 429"))
}

/// `b` admitted its share `burst` of tokens, plus at most what `rate` per second refilled meanwhile.
fn check_share(what: &str, b: &Burst, burst: u32, rate: f64) -> Result<()> {
    let refilled = (b.took.as_secs_f64() * rate).ceil() as u32;
    ensure!(
        (burst..=burst + refilled).contains(&b.admitted),
        "{what} admitted {} requests in {:?}; its share is a burst of {burst} (+ {refilled} refilled)",
        b.admitted,
        b.took
    );
    Ok(())
}

/// `Retry-After` is whole seconds in 1..=`max` (a token comes within 1/rate seconds).
fn retry_after_within(b: &Burst, max: u64) -> bool {
    b.retry_after.parse::<u64>().is_ok_and(|s| (1..=max).contains(&s))
}

/// The node's `/metrics` value of `series`.
async fn metric(http_addr: &str, series: &str) -> Result<Option<f64>> {
    let text = http_get(http_addr, "/metrics", &[]).await?.2;
    let text = String::from_utf8_lossy(&text).into_owned();
    Ok(text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_budget_is_divided_by_the_live_nodes_and_regrows_when_one_is_marked_down() -> Result<()>
{
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let mut c = Cluster::start(NET, 3, &[])?;
    let leader = c.wait_for_leader(ELECTION).await?;
    let backend = BackendProc::start("backend-1", &format!("127.0.{NET}.101:9001")).await?;
    admin::apply_toml(&c.grpc_addr(leader), &config(&backend.addr)).await.context("apply config")?;
    for id in 1..=3 {
        let plain = format!("{}:{PLAIN_PORT}", c.ip_of(id));
        let http = c.http_addr(id);
        wait_until(&format!("node {id} to serve and bind a and b"), SERVE, || {
            let (plain, http) = (plain.clone(), http.clone());
            async move {
                let (status, _, _) = http_get(&plain, "/", &[]).await?;
                ensure!(status == 200, "plain answered {status}");
                for l in ["a", "b"] {
                    let bound =
                        metric(&http, &format!("lbfleet_listener_bound{{node=\"{id}\",listener=\"{l}\"}}"))
                            .await?;
                    ensure!(bound == Some(1.0), "listener {l} bound: {bound:?}");
                }
                Ok(())
            }
        })
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    }

    // Three live nodes: each admits a burst of 30/3 = 10 on listener a, at 1/3 request per second.
    for id in 1..=3 {
        let b = burst(&format!("{}:{A_PORT}", c.ip_of(id))).await?;
        eprintln!(
            "node {id}, 3 live nodes: admitted {} in {:?}, then 429: {}",
            b.admitted,
            b.took,
            b.body.trim_end()
        );
        check_share(&format!("node {id} with 3 live nodes"), &b, FLEET_BURST / 3, 1.0 / 3.0)?;
        ensure!(retry_after_within(&b, 3), "Retry-After {:?}: {}", b.retry_after, b.body);
        ensure!(
            b.body.contains("burst 10, for all clients: this node's share of a fleet-wide 1 per second, burst 30, over 3 live nodes"),
            "{}",
            b.body
        );
        let limited = metric(
            &c.http_addr(id),
            &format!("lbfleet_rate_limited_total{{node=\"{id}\",listener=\"a\",route=\"\"}}"),
        )
        .await?;
        ensure!(limited == Some(1.0), "node {id}: rate_limited_total {limited:?}");
    }

    // The node keeps serving everything else: the unlimited listener answers on every node.
    for id in 1..=3 {
        let (status, _, _) = http_get(&format!("{}:{PLAIN_PORT}", c.ip_of(id)), "/", &[]).await?;
        ensure!(status == 200, "node {id}'s unlimited listener answered {status} while a was limited");
    }
    // A config over a limit is refused with its place and leaves the old one serving.
    let bad = config(&backend.addr).replacen("rate = 1\n", "rate = 0\n", 1);
    let refused = admin::apply_toml(&c.grpc_addr(leader), &bad).await.expect_err("rate = 0 accepted");
    ensure!(
        refused.message().contains("listener \"a\" admission rate_limit: rate 0 out of range 1..=1000000"),
        "{}",
        refused.message()
    );
    let in_force = admin::get_config(&c.grpc_addr(leader), false).await?.config_json;
    ensure!(in_force.contains("\"rate\": 1,") && !in_force.contains("\"rate\": 0"), "{in_force}");
    let (status, _, body) = http_get(&format!("{}:{A_PORT}", c.ip_of(1)), "/", &[]).await?;
    let body = String::from_utf8_lossy(&body);
    ensure!(
        status == 200 || status == 429 && body.contains("burst 10") && body.contains("over 3 live nodes"),
        "after the refused config: {status} {body}"
    );

    // Kill a follower; once the leader marks it down, the two survivors divide the budget by 2.
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    let survivor = (1..=3).find(|id| *id != leader && *id != victim).expect("another follower");
    c.node(victim).kill9();
    let killed = Instant::now();
    for id in [survivor, leader] {
        let probe = format!("{}:{A_PORT}", c.ip_of(id));
        wait_until(&format!("node {id} to share the budget among 2 live nodes"), MARKED, || {
            let probe = probe.clone();
            async move {
                let (status, _, body) = http_get(&probe, "/", &[]).await?;
                let body = String::from_utf8_lossy(&body);
                ensure!(status == 429 && body.contains("over 2 live nodes"), "{status}: {body}");
                Ok(())
            }
        })
        .await
        .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
        eprintln!(
            "node {id} shares among 2 live nodes {:?} after node {victim} was killed",
            killed.elapsed()
        );
    }

    // Listener b was never used: its buckets start now, with this node's new share of 30/2 = 15.
    for id in [leader, survivor] {
        let b = burst(&format!("{}:{B_PORT}", c.ip_of(id))).await;
        let b = b.map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
        eprintln!(
            "node {id}, 2 live nodes: admitted {} in {:?}, then 429: {}",
            b.admitted,
            b.took,
            b.body.trim_end()
        );
        check_share(&format!("node {id} with 2 live nodes"), &b, FLEET_BURST / 2, 0.5)?;
        ensure!(retry_after_within(&b, 2), "Retry-After {:?}: {}", b.retry_after, b.body);
        ensure!(
            b.body.contains("burst 15, for all clients") && b.body.contains("over 2 live nodes"),
            "{}",
            b.body
        );
    }
    Ok(())
}
