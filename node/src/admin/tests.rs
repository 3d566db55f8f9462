use super::*;
use lbfleet_api::view::BackendView;
use openraft::error::{EmptyMembership, ForwardToLeader, InProgress, LearnerNotFound};

#[test]
fn forward_to_leader_is_never_a_client_answer() {
    let e = RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader::<NodeId, LbNode> {
        leader_id: Some(3),
        leader_node: None,
    }));
    assert!(matches!(write_failure(e), Failure::NotLeader { leader: Some(3) }));
}

fn status_of(f: Failure) -> Status {
    match f {
        Failure::Status(s) => s,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[test]
fn membership_errors_map_to_client_errors() {
    let in_progress = RaftError::APIError(ClientWriteError::ChangeMembershipError(
        ChangeMembershipError::InProgress(InProgress { committed: None, membership_log_id: None }),
    ));
    assert_eq!(status_of(write_failure(in_progress)).code(), tonic::Code::FailedPrecondition);

    let empty = RaftError::APIError(ClientWriteError::ChangeMembershipError(
        ChangeMembershipError::EmptyMembership(EmptyMembership {}),
    ));
    let s = status_of(write_failure(empty));
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("without voters"), "{}", s.message());

    let missing = RaftError::APIError(ClientWriteError::ChangeMembershipError(
        ChangeMembershipError::LearnerNotFound(LearnerNotFound { node_id: 7 }),
    ));
    assert!(status_of(write_failure(missing)).message().contains("7"));
}

#[test]
fn lost_quorum_is_unknown_and_shutdown_unavailable() {
    let q = ProposeError::NotConfirmed { waited: Duration::from_secs(2), leader: 1, term: 4 };
    let s = propose_failure(q);
    assert_eq!(s.code(), tonic::Code::Unavailable);
    assert!(s.message().starts_with("no quorum"), "{}", s.message());
    let nq = ProposeError::NoQuorum {
        what: "set_drain".into(),
        waited: Duration::from_secs(2),
        leader: 1,
        term: 4,
    };
    let s = propose_failure(nq);
    assert_eq!(s.code(), tonic::Code::DeadlineExceeded, "the entry may still commit: unknown, not failed");
    assert!(s.message().ends_with("it may still be applied"), "{}", s.message());
    let unknown = ProposeError::Unknown { what: "set_drain".into(), leader: 2, message: "lost".into() };
    let s = propose_failure(unknown);
    assert_eq!(s.code(), tonic::Code::DeadlineExceeded, "an unknown outcome is not a refusal");
    assert!(s.message().contains("may have been applied"), "{}", s.message());
    let stopped: RaftError<NodeId, ClientWriteError<NodeId, LbNode>> = RaftError::Fatal(Fatal::Stopped);
    assert_eq!(status_of(write_failure(stopped)).code(), tonic::Code::Unavailable);
}

#[test]
fn no_quorum_names_the_timeout_and_the_leader() {
    let s = no_quorum("apply_config", Duration::from_secs(5), 2, 9);
    assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
    assert!(
        s.message().starts_with("no quorum: apply_config not committed within 5s (leader 2, term 9)"),
        "{}",
        s.message()
    );
}

#[test]
fn rejections_of_unknown_targets_are_not_found_and_the_rest_invalid() {
    assert_eq!(rejected(&["no pool named \"api\"".into()]).code(), tonic::Code::NotFound);
    assert_eq!(rejected(&["pool \"web\" has no backend \"x\"".into()]).code(), tonic::Code::NotFound);
    let s = rejected(&["pool \"web\": table_size 65536 is not prime".into(), "listener 1: port 0".into()]);
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("not prime") && s.message().contains("port 0"), "{}", s.message());
}

#[test]
fn new_nodes_are_validated_field_by_field() {
    let n = validate_new_node(4, "127.0.0.14:7400", "", 7401).unwrap();
    assert_eq!(n, LbNode { addr: "127.0.0.14:7400".into(), http_addr: "127.0.0.14:7401".into() });
    let n = validate_new_node(4, " 127.0.0.14:7400 ", "127.0.0.14:9000", 7401).unwrap();
    assert_eq!(n.addr, "127.0.0.14:7400");
    assert_eq!(n.http_addr, "127.0.0.14:9000");
    for (id, addr, http, field) in [
        (0, "127.0.0.14:7400", "", "id:"),
        (4, "", "", "addr:"),
        (4, "127.0.0.14", "", "addr:"),
        (4, "127.0.0.14:70000", "", "addr:"),
        (4, "127.0.0.14:7400", "nope", "http_addr:"),
    ] {
        let s = validate_new_node(id, addr, http, 7401).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with(field), "{addr:?}/{http:?}: {}", s.message());
    }
}

#[test]
fn watch_events_only_on_change_and_say_what_changed() {
    let a = WatchKey { applied_index: 5, config_version: 1, leader: Some(1), term: 2 };
    let first = watch_event(None, &a).unwrap();
    assert!(first.summary.starts_with("current:"), "{}", first.summary);
    assert!(watch_event(Some(&a), &a).is_none());
    let b = WatchKey { applied_index: 7, config_version: 2, leader: Some(3), term: 3 };
    let e = watch_event(Some(&a), &b).unwrap();
    assert_eq!((e.applied_index, e.config_version, e.leader, e.term), (7, 2, Some(3), 3));
    assert_eq!(e.summary, "config version 1 -> 2, leader 1 -> 3, term 2 -> 3, applied index 5 -> 7");
}

#[test]
fn backend_statuses_copy_every_field() {
    let v = BackendView {
        pool: "web".into(),
        addr: "127.0.0.1:9001".into(),
        weight: 3,
        healthy: false,
        draining: true,
        active: true,
        backup: true,
        standby: false,
    };
    let s = pb::BackendStatus::from(&v);
    assert_eq!(
        (s.pool.as_str(), s.addr.as_str(), s.weight, s.healthy, s.draining, s.active, s.backup, s.standby),
        ("web", "127.0.0.1:9001", 3, false, true, true, true, false)
    );
}
