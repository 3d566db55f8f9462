//! Placeholder until the tcp proxy lands: holds the socket and waits for `stop`.

use std::sync::Arc;

use tokio::sync::watch;

use super::ProxyContext;

pub async fn serve(
    name: String,
    socket: tokio::net::TcpListener,
    ctx: Arc<ProxyContext>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = (name, ctx);
    let _ = stop.wait_for(|s| *s).await;
    drop(socket);
}
