//! End-to-end tests of the lbnode control plane: real `lbnode` processes on their own loopback IPs,
//! driven over the admin gRPC API and the admin HTTP server.
//!
//! Each test uses its own IP range (127.0.0.21-23, 127.0.0.41-44) so that tests of other crates
//! using 127.0.0.11-13 do not collide. Children are killed and reaped on drop, also on panic, and
//! their logs are printed when a test fails.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lbfleet_api::pb::admin_client::AdminClient;
use lbfleet_api::pb::raft_client::RaftClient;
use lbfleet_api::pb::{self};
use tonic::transport::Channel;

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

/// A set of lbnode processes sharing one temp dir.
struct Fleet {
    dir: tempfile::TempDir,
    ips: Vec<String>,
    founders: usize,
    peers: String,
    extra: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Fleet {
    fn start(ips: &[&str]) -> Fleet {
        Fleet::start_with(ips, ips.len(), &[])
    }

    /// Start one node per IP. Nodes `1..=founders` get `--peers` naming the founders; the others
    /// start without it and wait to be added. `extra` is passed to every node.
    fn start_with(ips: &[&str], founders: usize, extra: &[&str]) -> Fleet {
        let ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
        let peers = ips[..founders]
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("{}={ip}:7400", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut fleet = Fleet {
            dir: tempfile::tempdir().expect("temp dir"),
            ips,
            founders,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            children: Vec::new(),
        };
        for id in 1..=fleet.ips.len() as u64 {
            let child = fleet.spawn(id);
            fleet.children.push(Some(child));
        }
        fleet
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    fn spawn(&self, id: u64) -> Child {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbnode"));
        if id as usize <= self.founders {
            cmd.args(["--peers", &self.peers]);
        }
        cmd.args(["--id", &id.to_string()])
            .args(["--bind", &self.ips[id as usize - 1]])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{id}")))
            .args(["--log-level", "info,openraft=warn"])
            .args(&self.extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lbnode")
    }

    fn restart(&mut self, id: u64) {
        assert!(self.children[id as usize - 1].is_none(), "node {id} is still running");
        let child = self.spawn(id);
        self.children[id as usize - 1] = Some(child);
    }

    fn grpc(&self, id: u64) -> String {
        format!("{}:7400", self.ips[id as usize - 1])
    }

    fn http(&self, id: u64) -> String {
        format!("{}:7401", self.ips[id as usize - 1])
    }

    fn running(&self) -> Vec<u64> {
        (1..=self.ips.len() as u64).filter(|id| self.children[*id as usize - 1].is_some()).collect()
    }

    /// SIGKILL and reap.
    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit status (SIGKILL after `deadline`).
    fn terminate(&mut self, id: u64, deadline: Duration) -> Option<ExitStatus> {
        let mut child = self.children[id as usize - 1].take()?;
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // SAFETY: plain kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for id in 1..=self.children.len() as u64 {
            self.kill(id);
        }
        if std::thread::panicking() {
            for id in 1..=self.ips.len() as u64 {
                let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("----- node {id} log (last {} lines) -----", tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

async fn admin(addr: &str) -> AdminClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(20))
        .connect_lazy();
    AdminClient::new(channel)
}

async fn local_status(addr: &str) -> Result<pb::NodeStatus, tonic::Status> {
    admin(addr).await.local_status(pb::LocalStatusRequest {}).await.map(|r| r.into_inner())
}

/// Poll until every node in `ids` answers and all name the same leader, which itself is one of
/// `ids` and says it leads. Returns the leader.
async fn wait_for_agreed_leader(fleet: &Fleet, ids: &[u64], not: Option<u64>, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        let mut leaders = Vec::new();
        let mut roles = Vec::new();
        for id in ids {
            match local_status(&fleet.grpc(*id)).await {
                Ok(s) => {
                    leaders.push(s.leader);
                    roles.push((s.id, s.role));
                }
                Err(e) => {
                    leaders.push(None);
                    last = format!("node {id}: {e}");
                }
            }
        }
        if let Some(Some(l)) = leaders.first() {
            let agreed = leaders.iter().all(|x| *x == Some(*l));
            let leads = roles.iter().any(|(id, role)| id == l && role == "leader");
            if agreed && leads && ids.contains(l) && Some(*l) != not {
                return *l;
            }
        }
        if Instant::now() > deadline {
            panic!("no agreed leader among {ids:?} within {within:?}: leaders {leaders:?} roles {roles:?} {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll `f` until it returns `Some`, or panic with `what` after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: not reached within {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A plain HTTP/1.0 GET; returns (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin HTTP");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("write request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_survive_the_leader_being_killed() {
    let mut fleet = Fleet::start(&["127.0.0.21", "127.0.0.22", "127.0.0.23"]);
    let all = fleet.running();
    let leader = wait_for_agreed_leader(&fleet, &all, None, Duration::from_secs(30)).await;
    let follower = *all.iter().find(|id| **id != leader).expect("a follower");

    // Watch from a follower: the first event is the current state, later ones follow applies.
    let mut watch =
        admin(&fleet.grpc(follower)).await.watch(pb::WatchRequest {}).await.expect("watch").into_inner();
    let first = watch.message().await.expect("watch event").expect("stream open");
    assert!(first.summary.starts_with("current:"), "{}", first.summary);
    assert_eq!(first.config_version, 0);

    // A config applied through a follower is forwarded to the leader.
    let started = Instant::now();
    let applied = admin(&fleet.grpc(follower))
        .await
        .apply_config(pb::ApplyConfigRequest { format: "toml".into(), body: WEB_CONFIG.into() })
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

    // Every node answers a linearizable read with it, and the leader is the one answering.
    for id in &all {
        let started = Instant::now();
        let got = admin(&fleet.grpc(*id))
            .await
            .get_config(pb::GetConfigRequest { stale: false })
            .await
            .unwrap_or_else(|e| panic!("linearizable get_config on node {id}: {e}"))
            .into_inner();
        eprintln!("linearizable get_config via node {id}: {:?}", started.elapsed());
        assert_eq!(got.version, 1, "node {id}");
        assert_eq!(got.answered_by, leader, "node {id}");
        assert!(got.config_json.contains("127.0.0.1:9002"), "node {id}: {}", got.config_json);
        assert!(got.applied_index >= applied.log_index);
    }

    // A bad config is refused with every problem listed, before it reaches the log.
    let bad = "[[pool]]\nname = \"web\"\npolicy = \"fastest\"\n[[pool.backend]]\naddr = \"10.0.0.1:99999\"\n";
    let err = admin(&fleet.grpc(follower))
        .await
        .apply_config(pb::ApplyConfigRequest { format: "toml".into(), body: bad.into() })
        .await
        .expect_err("bad config");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("fastest") && err.message().contains("99999"), "{}", err.message());

    // Drain through a follower; unknown backends are not found.
    let mut client = admin(&fleet.grpc(follower)).await;
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
        let mut c = admin(&fleet.grpc(via)).await;
        let mut times = Vec::new();
        for i in 0..20 {
            let t = Instant::now();
            c.set_drain(pb::SetDrainRequest {
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
    eventually("equal ring digests", Duration::from_secs(30), || async {
        let mut digests = Vec::new();
        for id in &all {
            let s = local_status(&fleet.grpc(*id)).await.map_err(|e| e.to_string())?;
            if s.applied_index < last_index {
                return Err(format!("node {id} at {} < {last_index}", s.applied_index));
            }
            digests.push(s.ring_digest);
        }
        if digests.windows(2).all(|w| w[0] == w[1]) {
            Ok(())
        } else {
            Err(format!("{digests:?}"))
        }
    })
    .await;

    // Garbage on the Raft service is refused without harming the node.
    let mut raft = RaftClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", fleet.grpc(follower)))
            .unwrap()
            .connect_lazy(),
    );
    let err = raft.append_entries(pb::RaftPayload { data: vec![0xff; 16] }).await.expect_err("garbage");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("malformed AppendEntries payload"), "{}", err.message());
    local_status(&fleet.grpc(follower)).await.expect("node still serves after garbage");

    // Admin HTTP.
    let (code, body) = http_get(&fleet.http(leader), "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok leader\n"));
    let (code, body) = http_get(&fleet.http(follower), "/api/v1/state");
    assert_eq!(code, 200);
    let state: serde_json::Value = serde_json::from_str(&body).expect("state JSON");
    assert_eq!(state["leader"], leader);
    assert_eq!(state["config"]["pool"][0]["name"], "web");
    let (code, body) = http_get(&fleet.http(leader), "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains(&format!("lbfleet_raft_is_leader{{node=\"{leader}\"}} 1")), "{body}");
    let (code, body) = http_get(&fleet.http(leader), "/");
    assert_eq!(code, 200);
    assert!(body.contains("<html"), "{body}");
    assert_eq!(http_get(&fleet.http(leader), "/nope").0, 404);

    // Kill the leader: the other two elect a new one and still hold the config.
    fleet.kill(leader);
    let survivors: Vec<u64> = fleet.running();
    let killed_at = Instant::now();
    let new_leader = wait_for_agreed_leader(&fleet, &survivors, Some(leader), Duration::from_secs(30)).await;
    eprintln!("new leader {new_leader} agreed {:?} after SIGKILL of leader {leader}", killed_at.elapsed());
    for id in &survivors {
        let got = admin(&fleet.grpc(*id))
            .await
            .get_config(pb::GetConfigRequest { stale: false })
            .await
            .unwrap_or_else(|e| panic!("get_config on node {id} after failover: {e}"))
            .into_inner();
        assert_eq!(got.version, 1, "node {id}");
        assert!(got.config_json.contains("127.0.0.1:9002"));
    }

    // Two of three still commit writes.
    let v2 = admin(&fleet.grpc(survivors[0]))
        .await
        .apply_config(pb::ApplyConfigRequest {
            format: "toml".into(),
            body: WEB_CONFIG.replace("weight = 2", "weight = 3"),
        })
        .await
        .expect("write with two of three")
        .into_inner();
    assert_eq!(v2.version, 2);

    // The killed node restarts from its data dir and catches up.
    fleet.restart(leader);
    eventually("restarted node catches up", Duration::from_secs(30), || async {
        let s = local_status(&fleet.grpc(leader)).await.map_err(|e| e.to_string())?;
        if s.config_version == 2 && s.applied_index >= v2.log_index {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    // SIGTERM: graceful exit with status 0.
    let status = fleet.terminate(follower, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_later_catches_up_from_a_snapshot_and_members_can_be_removed() {
    // Node 4 starts without --peers; small snapshot interval so that the log is purged before it joins.
    let fleet = Fleet::start_with(
        &["127.0.0.41", "127.0.0.42", "127.0.0.43", "127.0.0.44"],
        3,
        &["--snapshot-logs", "20"],
    );
    let founders = [1, 2, 3];
    let leader = wait_for_agreed_leader(&fleet, &founders, None, Duration::from_secs(30)).await;
    let follower = *founders.iter().find(|id| **id != leader).expect("a follower");
    let mut client = admin(&fleet.grpc(follower)).await;

    // A node that is in no cluster says so instead of hanging.
    let err = admin(&fleet.grpc(4))
        .await
        .apply_config(pb::ApplyConfigRequest { format: "toml".into(), body: WEB_CONFIG.into() })
        .await
        .expect_err("node 4 is not a member");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("not a member of a cluster yet"), "{}", err.message());

    client
        .apply_config(pb::ApplyConfigRequest { format: "toml".into(), body: WEB_CONFIG.into() })
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
    eventually("leader purges its log", Duration::from_secs(30), || async {
        let (_, body) = http_get(&fleet.http(leader), "/api/v1/state");
        let state: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let purged = state["purged_index"].as_u64().unwrap_or(0);
        if purged > 0 {
            Ok(())
        } else {
            Err(format!("purged_index {purged}, snapshot {}", state["snapshot_index"]))
        }
    })
    .await;

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
    let leader_digest = local_status(&fleet.grpc(leader)).await.expect("leader status").ring_digest;
    eventually("node 4 has the replicated state", Duration::from_secs(30), || async {
        let s = local_status(&fleet.grpc(4)).await.map_err(|e| e.to_string())?;
        if s.voter && s.config_version == 1 && s.applied_index >= last_index && s.ring_digest == leader_digest
        {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // It got there through a snapshot: the entries it lacked were gone from the leader's log.
    let (_, body) = http_get(&fleet.http(4), "/api/v1/state");
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
    let new_leader = wait_for_agreed_leader(&fleet, &rest, Some(leader), Duration::from_secs(30)).await;
    let v2 = admin(&fleet.grpc(new_leader))
        .await
        .apply_config(pb::ApplyConfigRequest {
            format: "toml".into(),
            body: WEB_CONFIG.replace("weight = 2", "weight = 5"),
        })
        .await
        .expect("write after removing the old leader")
        .into_inner();
    assert_eq!(v2.version, 2);
    let nodes = admin(&fleet.grpc(rest[0])).await.list_nodes(pb::ListNodesRequest {}).await.expect("nodes");
    assert_eq!(nodes.into_inner().nodes.iter().map(|n| n.id).collect::<Vec<_>>(), rest);
}

#[test]
fn bad_flags_exit_non_zero_naming_each_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_lbnode"))
        .args(["--id", "0", "--bind", "nope", "--peers", "1=x", "--election-max-ms", "10"])
        .output()
        .expect("run lbnode");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for field in ["id:", "bind:", "peers:", "election_max_ms:"] {
        assert!(stderr.contains(field), "{field} not named in:\n{stderr}");
    }
}
