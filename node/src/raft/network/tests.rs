use super::*;
use openraft::error::Infallible;
use std::time::Duration;

fn vote_request() -> VoteRequest<NodeId> {
    VoteRequest::new(openraft::Vote::new(1, 1), None)
}

async fn network_to(addr: &str) -> GrpcNetwork {
    let mut factory = GrpcNetworkFactory::new(1, ChannelCache::new(tonic::transport::ClientTlsConfig::new()));
    factory.new_client(2, &LbNode { addr: addr.into(), http_addr: String::new() }).await
}

#[test]
fn garbage_reply_is_a_network_error_naming_rpc_and_peer() {
    let err = decode_reply::<VoteResponse<NodeId>, Infallible>(RPCTypes::Vote, 2, &[0xff; 3]).unwrap_err();
    assert!(matches!(err, RPCError::Network(_)), "{err:?}");
    assert!(err.to_string().contains("malformed Vote reply from node 2"), "{err}");
}

#[test]
fn a_refusal_by_the_peer_is_a_remote_error() {
    let refusal: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
        Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
    let bytes = postcard::to_allocvec(&refusal).unwrap();
    let err = decode_reply::<VoteResponse<NodeId>, Infallible>(RPCTypes::Vote, 2, &bytes).unwrap_err();
    assert!(matches!(err, RPCError::RemoteError(ref r) if r.target == 2), "{err:?}");
}

#[test]
fn an_answer_with_an_error_status_is_a_network_error() {
    assert_eq!(classify(&tonic::Status::invalid_argument("malformed")), Failure::Network);
    assert_eq!(classify(&tonic::Status::unimplemented("no such method")), Failure::Network);
    assert_eq!(classify(&tonic::Status::unavailable("connection closed")), Failure::Unreachable);
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut net = network_to(&format!("127.0.0.1:{port}")).await;
    let err = net.vote(vote_request(), RPCOption::new(Duration::from_secs(2))).await.unwrap_err();
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn an_invalid_peer_address_is_unreachable_not_a_panic() {
    let mut net = network_to("not an address").await;
    let err = net.vote(vote_request(), RPCOption::new(Duration::from_secs(1))).await.unwrap_err();
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    assert!(err.to_string().contains("not an address"), "{err}");
}

#[tokio::test]
async fn a_silent_peer_times_out_after_the_hard_ttl() {
    // Accepts TCP connections but never speaks HTTP/2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let mut net = network_to(&addr.to_string()).await;
    let err = net.vote(vote_request(), RPCOption::new(Duration::from_millis(300))).await.unwrap_err();
    assert!(matches!(err, RPCError::Timeout(ref t) if t.target == 2 && t.id == 1), "{err:?}");
    hold.abort();
}
