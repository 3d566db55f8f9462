//! End-to-end tests of the lbnode control plane: real `lbnode` processes on their own loopback IPs,
//! driven over the admin gRPC API and the admin HTTP server.
//!
//! Each test uses its own IP range (127.0.0.21-23, 127.0.0.41-44) so that tests of other crates
//! using 127.0.0.11-13 do not collide. The processes are `lbfleet_tests::Cluster`s: killed and reaped
//! on drop, also on panic, and their logs are printed when a test fails.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use lbfleet_api::pb::raft_client::RaftClient;
use lbfleet_api::pb::{self};
use lbfleet_tests::{admin, bin, http_get, wait_until, Cluster};

const WEB_CONFIG: &str = r#"
[[pool]]
name = "web"
policy = "maglev"
  [[pool.backend]]
  addr = "127.0.0.1:9001"
  [[pool.backend]]
  addr = "127.0.0.1:9002"
  weight = 2

[[listener]]
name = "web"
protocol = "http"
port = 8080
pool = "web"
"#;

/// Node logs: the one filter these tests want (openraft's info lines drown everything else).
const LOG: &str = "info,openraft=warn";

/// Nodes 1..=n on 127.0.0.<host_base + id>; the first `founders` bootstrap the cluster.
fn start(host_base: u8, n: u64, founders: u64, extra: &[&str]) -> Cluster {
    Cluster::builder(0)
        .host_base(host_base)
        .nodes(n)
        .founders(founders)
        .args(extra)
        .log_filter(LOG)
        .start()
        .expect("start lbnode processes")
}

/// An Admin client of node `id`, 20 s per call (adding a node waits for its catch-up).
async fn admin(c: &Cluster, id: u64) -> admin::Admin {
    admin::connect_with_timeout(&c.grpc_addr(id), Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("admin client of node {id}: {e:#}"))
}

/// One GET on the admin HTTP server: (status code, body).
/// One GET on the admin HTTP server with the read token: (status code, body).
async fn http_text(addr: &str, path: &str) -> (u16, String) {
    let bearer = lbfleet_tests::creds().read_bearer();
    let (code, _, body) = http_get(addr, path, &[("authorization", &bearer)])
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e:#}"));
    (code, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_survive_the_leader_being_killed() {
    let mut c = start(20, 3, 3, &[]);
    let all = c.running();
    let leader = c.wait_for_leader_among(&all, Duration::from_secs(30)).await.unwrap();
    let follower = *all.iter().find(|id| **id != leader).expect("a follower");

    // Watch from a follower: the first event is the current state, later ones follow applies.
    let mut watch = admin(&c, follower).await.watch(pb::WatchRequest {}).await.expect("watch").into_inner();
    let first = watch.message().await.expect("watch event").expect("stream open");
    assert!(first.summary.starts_with("current:"), "{}", first.summary);
    assert_eq!(first.config_version, 0);

    // A config applied through a follower is forwarded to the leader.
    let started = Instant::now();
    let applied = admin(&c, follower)
        .await
        .apply_config(pb::ApplyConfigRequest {
            format: "toml".into(),
            body: WEB_CONFIG.into(),
            dry_run: false,
        })
        .await
        .expect("apply through a follower")
        .into_inner();
    eprintln!("apply_config through follower {follower}: {:?}", started.elapsed());
    assert_eq!(applied.version, 1);
    assert!(applied.log_index > 0);
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = watch.message().await.expect("watch event").expect("stream open");
            if e.config_version == 1 {
                return e;
            }
        }
    })
    .await
    .expect("watch reports the new config version");
    assert!(seen.summary.contains("config version 0 -> 1"), "{}", seen.summary);
    assert!(seen.applied_index >= applied.log_index);
    drop(watch);

    // Every node answers a linearizable read with it: the leader confirms its leadership and hands out
    // its read index, and the node asked answers once it has applied up to that index.
    for id in &all {
        let started = Instant::now();
        let got = admin(&c, *id)
            .await
            .get_config(pb::GetConfigRequest { stale: false })
            .await
            .unwrap_or_else(|e| panic!("linearizable get_config on node {id}: {e}"))
            .into_inner();
        eprintln!("linearizable get_config via node {id}: {:?}", started.elapsed());
        assert_eq!(got.version, 1, "node {id}");
        assert_eq!(got.answered_by, *id, "node {id}");
        assert!(got.config_json.contains("127.0.0.1:9002"), "node {id}: {}", got.config_json);
        assert!(got.applied_index >= applied.log_index);
    }

    // A bad config is refused with every problem listed, before it reaches the log.
    let bad = "[[pool]]\nname = \"web\"\npolicy = \"fastest\"\n[[pool.backend]]\naddr = \"10.0.0.1:99999\"\n";
    let err = admin(&c, follower)
        .await
        .apply_config(pb::ApplyConfigRequest { format: "toml".into(), body: bad.into(), dry_run: false })
        .await
        .expect_err("bad config");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("fastest") && err.message().contains("99999"), "{}", err.message());

    // Drain through a follower; unknown backends are not found.
    let mut client = admin(&c, follower).await;
    client
        .set_drain(pb::SetDrainRequest {
            pool: "web".into(),
            backend: "127.0.0.1:9001".into(),
            draining: true,
        })
        .await
        .expect("drain");
    let err = client
        .set_drain(pb::SetDrainRequest {
            pool: "web".into(),
            backend: "127.0.0.1:9999".into(),
            draining: true,
        })
        .await
        .expect_err("unknown backend");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let backends =
        client.list_backends(pb::ListBackendsRequest { stale: false }).await.expect("backends").into_inner();
    let drained: Vec<_> = backends.backends.iter().filter(|b| b.draining).map(|b| b.addr.as_str()).collect();
    assert_eq!(drained, vec!["127.0.0.1:9001"]);
    assert_eq!(backends.backends.iter().find(|b| b.addr == "127.0.0.1:9002").map(|b| b.weight), Some(2));

    // Write latency on loopback (debug build): 20 writes through the follower and 20 on the leader.
    for (name, via) in [("follower", follower), ("leader", leader)] {
        let mut writer = admin(&c, via).await;
        let mut times = Vec::new();
        for i in 0..20 {
            let t = Instant::now();
            writer
                .set_drain(pb::SetDrainRequest {
                    pool: "web".into(),
                    backend: "127.0.0.1:9002".into(),
                    draining: i % 2 == 0,
                })
                .await
                .expect("drain toggle");
            times.push(t.elapsed());
        }
        times.sort();
        eprintln!("set_drain via {name}: median {:?}, max {:?}", times[10], times[19]);
    }

    // The cluster-wide status from any node lists every member as reachable with one leader.
    let status = client.status(pb::StatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes.iter().all(|n| n.reachable && n.voter), "{:?}", status.nodes);
    let nodes = client.list_nodes(pb::ListNodesRequest {}).await.expect("nodes").into_inner();
    assert_eq!(nodes.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![1, 2, 3]);

    // Once every node applied everything, they publish the same ring digest.
    let last_index = backends.applied_index;
    wait_until("equal ring digests", Duration::from_secs(30), || async {
        let mut digests = Vec::new();
        for id in &all {
            let s = admin::local_status(&c.grpc_addr(*id)).await?;
            if s.applied_index < last_index {
                bail!("node {id} at {} < {last_index}", s.applied_index);
            }
            digests.push(s.ring_digest);
        }
        ensure!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
        Ok(())
    })
    .await
    .unwrap();

    // Garbage on the Raft service is refused without harming the node.
    let mut raft = RaftClient::new(
        admin::node_channel(&c.grpc_addr(follower), Duration::from_secs(5), leader)
            .await
            .expect("node channel"),
    );
    let err = raft.append_entries(pb::RaftPayload { data: vec![0xff; 16] }).await.expect_err("garbage");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("malformed AppendEntries payload"), "{}", err.message());
    admin::local_status(&c.grpc_addr(follower)).await.expect("node still serves after garbage");

    // Admin HTTP: /healthz and /metrics are open, the state and the dashboard need a token.
    let http = c.http_addr(leader);
    let (code, _, body) = http_get(&http, "/healthz", &[]).await.unwrap();
    assert_eq!((code, &body[..]), (200, &b"ok leader\n"[..]));
    assert_eq!(http_get(&http, "/metrics", &[]).await.unwrap().0, 200);
    for path in ["/api/v1/state", "/"] {
        let (code, headers, body) = http_get(&http, path, &[]).await.unwrap();
        assert_eq!(code, 401, "{path} without a token");
        assert!(String::from_utf8_lossy(&body).contains("missing token"), "{body:?}");
        assert_eq!(lbfleet_tests::header(&headers, "www-authenticate"), "Bearer realm=\"lbfleet\"");
    }
    let wrong = http_get(&http, "/api/v1/state", &[("authorization", "Bearer lbf_wrong")]).await.unwrap();
    assert_eq!(wrong.0, 401);
    // A browser: `?token=` once sets an HttpOnly cookie and drops the token from the address.
    let read = &lbfleet_tests::creds().read_token;
    let (code, headers, _) = http_get(&http, &format!("/?token={read}"), &[]).await.unwrap();
    assert_eq!(code, 303);
    assert_eq!(lbfleet_tests::header(&headers, "location"), "/");
    let cookie = lbfleet_tests::header(&headers, "set-cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    assert_eq!(http_get(&http, "/api/v1/state", &[("cookie", &pair)]).await.unwrap().0, 200);
    let (code, body) = http_text(&c.http_addr(leader), "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok leader\n"));
    let (code, body) = http_text(&c.http_addr(follower), "/api/v1/state").await;
    assert_eq!(code, 200);
    let state: serde_json::Value = serde_json::from_str(&body).expect("state JSON");
    assert_eq!(state["leader"], leader);
    assert_eq!(state["config"]["pool"][0]["name"], "web");
    let (code, body) = http_text(&c.http_addr(leader), "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains(&format!("lbfleet_raft_is_leader{{node=\"{leader}\"}} 1")), "{body}");
    let (code, body) = http_text(&c.http_addr(leader), "/").await;
    assert_eq!(code, 200);
    assert!(body.contains("<html"), "{body}");
    assert_eq!(http_text(&c.http_addr(leader), "/nope").await.0, 404);

    // Kill the leader: the other two elect a new one and still hold the config.
    c.node(leader).kill9();
    let survivors: Vec<u64> = c.running();
    let killed_at = Instant::now();
    let new_leader = c.wait_for_leader_among(&survivors, Duration::from_secs(30)).await.unwrap();
    assert_ne!(new_leader, leader);
    eprintln!("new leader {new_leader} agreed {:?} after SIGKILL of leader {leader}", killed_at.elapsed());
    for id in &survivors {
        let got = admin(&c, *id)
            .await
            .get_config(pb::GetConfigRequest { stale: false })
            .await
            .unwrap_or_else(|e| panic!("get_config on node {id} after failover: {e}"))
            .into_inner();
        assert_eq!(got.version, 1, "node {id}");
        assert!(got.config_json.contains("127.0.0.1:9002"));
    }

    // Two of three still commit writes.
    let v2 = admin(&c, survivors[0])
        .await
        .apply_config(pb::ApplyConfigRequest {
            format: "toml".into(),
            body: WEB_CONFIG.replace("weight = 2", "weight = 3"),
            dry_run: false,
        })
        .await
        .expect("write with two of three")
        .into_inner();
    assert_eq!(v2.version, 2);

    // The killed node restarts from its data dir and catches up.
    c.node(leader).start().expect("restart the killed node");
    wait_until("restarted node catches up", Duration::from_secs(30), || async {
        let s = admin::local_status(&c.grpc_addr(leader)).await?;
        ensure!(s.config_version == 2 && s.applied_index >= v2.log_index, "{s:?}");
        Ok(())
    })
    .await
    .unwrap();

    // SIGTERM: graceful exit with status 0.
    let code = c.node(follower).terminate(Duration::from_secs(15)).await.expect("exits after SIGTERM");
    assert_eq!(code, Some(0), "exit code after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_later_catches_up_from_a_snapshot_and_members_can_be_removed() {
    // Node 4 starts without --peers; small snapshot interval so that the log is purged before it joins.
    let c = start(40, 4, 3, &["--snapshot-logs", "20"]);
    let founders = [1, 2, 3];
    let leader = c.wait_for_leader_among(&founders, Duration::from_secs(30)).await.unwrap();
    let follower = *founders.iter().find(|id| **id != leader).expect("a follower");
    let mut client = admin(&c, follower).await;

    // A node that is in no cluster says so instead of hanging.
    let err = admin(&c, 4)
        .await
        .apply_config(pb::ApplyConfigRequest {
            format: "toml".into(),
            body: WEB_CONFIG.into(),
            dry_run: false,
        })
        .await
        .expect_err("node 4 is not a member");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("not a member of a cluster yet"), "{}", err.message());

    client
        .apply_config(pb::ApplyConfigRequest {
            format: "toml".into(),
            body: WEB_CONFIG.into(),
            dry_run: false,
        })
        .await
        .expect("apply");
    let mut last_index = 0;
    for i in 0..80 {
        last_index = client
            .set_drain(pb::SetDrainRequest {
                pool: "web".into(),
                backend: "127.0.0.1:9001".into(),
                draining: i % 2 == 0,
            })
            .await
            .expect("drain toggle")
            .into_inner()
            .log_index;
    }
    // The leader snapshotted and purged the head of its log, so node 4 can only join by snapshot.
    wait_until("leader purges its log", Duration::from_secs(30), || async {
        let bearer = lbfleet_tests::creds().read_bearer();
        let (_, _, body) =
            http_get(&c.http_addr(leader), "/api/v1/state", &[("authorization", &bearer)]).await?;
        let state: serde_json::Value = serde_json::from_slice(&body)?;
        let purged = state["purged_index"].as_u64().unwrap_or(0);
        ensure!(purged > 0, "purged_index {purged}, snapshot {}", state["snapshot_index"]);
        Ok(())
    })
    .await
    .unwrap();

    // Input is checked before anything is proposed.
    let err = client
        .add_node(pb::AddNodeRequest { id: 0, addr: "127.0.0.44:7400".into(), ..Default::default() })
        .await
        .expect_err("id 0");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .add_node(pb::AddNodeRequest { id: 4, addr: "127.0.0.44".into(), ..Default::default() })
        .await
        .expect_err("no port");
    assert!(err.message().starts_with("addr:"), "{}", err.message());
    let err = client
        .add_node(pb::AddNodeRequest { id: follower, addr: "127.0.0.99:7400".into(), ..Default::default() })
        .await
        .expect_err("existing id, other address");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");

    // Add node 4 through a follower: learner, catch up (by snapshot), then voter.
    let started = Instant::now();
    let added = client
        .add_node(pb::AddNodeRequest { id: 4, addr: "127.0.0.44:7400".into(), ..Default::default() })
        .await
        .expect("add node 4")
        .into_inner();
    eprintln!("add_node 4 (snapshot catch-up + promotion): {:?}", started.elapsed());
    let voters: Vec<u64> = added.nodes.iter().filter(|n| n.voter).map(|n| n.id).collect();
    assert_eq!(voters, vec![1, 2, 3, 4]);
    assert_eq!(added.nodes.iter().find(|n| n.id == 4).map(|n| n.http_addr.as_str()), Some("127.0.0.44:7401"));
    let leader_digest = admin::local_status(&c.grpc_addr(leader)).await.expect("leader status").ring_digest;
    wait_until("node 4 has the replicated state", Duration::from_secs(30), || async {
        let s = admin::local_status(&c.grpc_addr(4)).await?;
        ensure!(
            s.voter
                && s.config_version == 1
                && s.applied_index >= last_index
                && s.ring_digest == leader_digest,
            "{s:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    // It got there through a snapshot: the entries it lacked were gone from the leader's log.
    let (_, body) = http_text(&c.http_addr(4), "/api/v1/state").await;
    let state: serde_json::Value = serde_json::from_str(&body).expect("node 4 state");
    assert!(state["snapshot_index"].as_u64().unwrap_or(0) > 0, "node 4 installed no snapshot: {state}");
    // Adding it again is harmless.
    client
        .add_node(pb::AddNodeRequest { id: 4, addr: "127.0.0.44:7400".into(), ..Default::default() })
        .await
        .expect("add node 4 again");

    // Remove node 4, then remove the current leader itself: the remaining two carry on.
    let removed = client.remove_node(pb::RemoveNodeRequest { id: 4 }).await.expect("remove 4").into_inner();
    assert_eq!(removed.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    let err = client.remove_node(pb::RemoveNodeRequest { id: 4 }).await.expect_err("already removed");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let removed = client.remove_node(pb::RemoveNodeRequest { id: leader }).await.expect("remove the leader");
    let rest: Vec<u64> = founders.iter().copied().filter(|id| *id != leader).collect();
    assert_eq!(removed.into_inner().nodes.iter().map(|n| n.id).collect::<Vec<_>>(), rest);
    let new_leader = c.wait_for_leader_among(&rest, Duration::from_secs(30)).await.unwrap();
    assert_ne!(new_leader, leader);
    let v2 = admin(&c, new_leader)
        .await
        .apply_config(pb::ApplyConfigRequest {
            format: "toml".into(),
            body: WEB_CONFIG.replace("weight = 2", "weight = 5"),
            dry_run: false,
        })
        .await
        .expect("write after removing the old leader")
        .into_inner();
    assert_eq!(v2.version, 2);
    let nodes = admin(&c, rest[0]).await.list_nodes(pb::ListNodesRequest {}).await.expect("nodes");
    assert_eq!(nodes.into_inner().nodes.iter().map(|n| n.id).collect::<Vec<_>>(), rest);
}

#[test]
fn bad_flags_exit_non_zero_naming_each_field() {
    let out = Command::new(bin("lbnode"))
        .args(["--id", "0", "--bind", "nope", "--peers", "1=x", "--election-max-ms", "10"])
        .output()
        .expect("run lbnode");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for field in ["id:", "bind:", "peers:", "election_max_ms:"] {
        assert!(stderr.contains(field), "{field} not named in:\n{stderr}");
    }
}
