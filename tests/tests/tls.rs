//! TLS on real `lbnode` listeners with real clients (curl, openssl s_client, h2load) and certificates
//! made in the test (rcgen, one test CA).
//!
//! What must hold:
//! - terminate: SNI picks the certificate (curl verifies it against the CA for its name; openssl
//!   s_client shows the subject), an unknown name gets the default; ALPN h2 works (curl --http2,
//!   h2load); TLS 1.1 is refused, 1.2 and 1.3 accepted; the backend sees `X-Forwarded-Proto: https`;
//! - rotation: a certificate replaced by `apply` (inline PEM) or on disk (a file) is served to new
//!   handshakes while a keep-alive connection made before goes on working;
//! - secrets: an inline key never shows in `get config` or `/api/v1/state`; giving back the redacted
//!   config is refused with a message saying to give the key; a key that does not match its
//!   certificate is refused naming the listener and the certificate, the old config keeps serving;
//! - passthrough: a TCP listener routes by the ClientHello's SNI to two TLS backends with their own
//!   certificates (which the client verifies end to end, so the bytes went through untouched);
//! - TCP terminate: decrypted bytes reach a plain backend;
//! - backend TLS: a pool verified against its CA answers (health checks over TLS too); a pool with
//!   the wrong CA answers 502 naming the TLS failure.
//!
//! Addresses: nodes on 127.0.150.11 and 127.0.151.11 (the harness's layout), backends in this test
//! process on 127.0.152.x and 127.0.153.x.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lbfleet_tests::{admin, http_get, loopback_ok, wait_until, Cluster};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::task::JoinHandle;

const ELECTION: Duration = Duration::from_secs(20);
const SERVE: Duration = Duration::from_secs(30);

fn ip(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, c, d))
}

/// A test CA and the certificates it signs.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        let issuer = Issuer::new(params, key);
        Ok(Ca { pem, issuer })
    }

    /// (certificate PEM, key PEM) with subject CN `cn` for DNS names `names`.
    fn issue(&self, cn: &str, names: &[&str]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// TOML basic string with the newlines of a PEM escaped.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\n', "\\n"))
}

fn inline_cert(names: &[&str], (cert, key): &(String, String), default: bool) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[[listener.tls.certificates]]\nserver_names = [{}]\ndefault = {default}\ncert_pem = {}\nkey_pem = {}\n",
        names.join(", "),
        toml_str(cert),
        toml_str(key)
    )
}

/// HTTP backend: answers `<name> proto=<X-Forwarded-Proto>`.
async fn http_backend(at: SocketAddr, name: &'static str) -> Result<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind(at).await.with_context(|| format!("bind http backend {at}"))?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let proto = req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok());
                    let body = format!("{name} proto={}", proto.unwrap_or(""));
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    Ok((addr, task))
}

fn server_config(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// HTTPS backend (its own certificate): answers `<name>` to every request.
async fn https_backend(
    at: SocketAddr,
    name: &'static str,
    cert: &(String, String),
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&cert.0, &cert.1)?);
    let l = TcpListener::bind(at).await.with_context(|| format!("bind https backend {at}"))?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else { return };
                let svc = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(name))))
                    },
                );
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    Ok((addr, task))
}

/// `curl` over TLS to `name:port` resolved to `node`, verifying against `ca_file`: (http version, body).
async fn curl(
    name: &str,
    node: Ipv4Addr,
    port: u16,
    ca_file: &Path,
    extra: &[&str],
) -> Result<(String, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{port}:{node}"))
        .arg("--cacert")
        .arg(ca_file)
        .args(["-w", "\n%{http_version}"])
        .args(extra)
        .arg(format!("https://{name}:{port}/"));
    let out = tokio::time::timeout(Duration::from_secs(15), cmd.output()).await.context("curl hung")??;
    ensure!(out.status.success(), "curl {name}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').ok_or_else(|| anyhow!("curl output {text:?}"))?;
    Ok((version.to_string(), body.to_string()))
}

/// `openssl s_client` to `node:port` with SNI `name` (none if empty) and `extra` flags: (success,
/// the served certificate's subject without spaces, all output).
async fn s_client(node: Ipv4Addr, port: u16, name: &str, extra: &[&str]) -> Result<(bool, String, String)> {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client").arg("-connect").arg(format!("{node}:{port}"));
    if name.is_empty() {
        cmd.arg("-noservername");
    } else {
        cmd.args(["-servername", name]);
    }
    cmd.args(extra).stdin(std::process::Stdio::null());
    let out =
        tokio::time::timeout(Duration::from_secs(15), cmd.output()).await.context("s_client hung")??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let subject =
        text.lines().find_map(|l| l.strip_prefix("subject=")).map(|s| s.replace(' ', "")).unwrap_or_default();
    let ok = out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    Ok((ok, subject, text))
}

/// A TLS client connection (rustls, verifying against `ca`) speaking HTTP/1.1 with keep-alive.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
}

impl KeepAlive {
    async fn open(node: Ipv4Addr, port: u16, name: &str, ca: &str) -> Result<KeepAlive> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(SocketAddr::new(node.into(), port)).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(name.to_string())?, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(KeepAlive { sender })
    }

    async fn get(&mut self, host: &str) -> Result<(u16, String)> {
        let req = hyper::Request::get("/").header("host", host).body(http_body_util::Empty::new())?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.sender.send_request(req)).await??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn have(tool: &str, arg: &str) -> bool {
    std::process::Command::new(tool).arg(arg).output().is_ok()
}

/// Write `text` to `path` in one rename, so that a reader never sees half of it.
fn replace_file(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_picks_by_sni_speaks_h2_rotates_and_keeps_keys_secret() -> Result<()> {
    const NET: u8 = 150;
    const PORT: u16 = 8443;
    const FILE_PORT: u16 = 8444;
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("lbfleet test CA")?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let a = ca.issue("a.test", &["a.test"])?;
    let b = ca.issue("b.test", &["b.test"])?;
    let d = ca.issue("default.test", &["default.test"])?;
    let f1 = ca.issue("file-1", &["file.test"])?;
    let (cert_file, key_file) = (dir.path().join("file.pem"), dir.path().join("file.key"));
    replace_file(&cert_file, &f1.0)?;
    replace_file(&key_file, &f1.1)?;

    let mut c = Cluster::start(NET, 1, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let node = c.nodes[0].ip;
    let grpc = c.nodes[0].grpc_addr();
    let (web, _w) = http_backend(SocketAddr::new(ip(152, 1), 0), "web").await?;
    let config = |a_cert: &(String, String), b_cert: &(String, String)| {
        format!(
            "[[pool]]\nname = \"web\"\n[[pool.backend]]\naddr = \"{web}\"\n[pool.health]\nkind = \"none\"\n\n\
             [[listener]]\nname = \"web-tls\"\nprotocol = \"http\"\nport = {PORT}\npool = \"web\"\n\
             [listener.tls]\nhandshake_timeout = \"5s\"\n{}{}{}\n\
             [[listener]]\nname = \"web-file\"\nprotocol = \"http\"\nport = {FILE_PORT}\npool = \"web\"\n\
             [listener.tls]\n[[listener.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            inline_cert(&["a.test"], a_cert, false),
            inline_cert(&["b.test"], b_cert, false),
            inline_cert(&["default.test"], &d, true),
            cert_file.display(),
            key_file.display(),
        )
    };
    admin::apply_toml(&grpc, &config(&a, &b)).await.context("apply config")?;

    // SNI: curl verifies each name's certificate against the CA; the backend sees https.
    let ca_path = ca_file.clone();
    wait_until("the TLS listener to serve a.test", SERVE, || {
        let ca_path = ca_path.clone();
        async move {
            let (_, body) = curl("a.test", node, PORT, &ca_path, &["--http1.1"]).await?;
            ensure!(body == "web proto=https", "body {body:?}");
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    let (version, body) = curl("b.test", node, PORT, &ca_file, &["--http1.1"]).await?;
    ensure!(version == "1.1" && body == "web proto=https", "b.test over HTTP/1.1: {version} {body:?}");
    for (name, subject) in [
        ("a.test", "CN=a.test"),
        ("b.test", "CN=b.test"),
        ("other.test", "CN=default.test"),
        ("", "CN=default.test"),
    ] {
        let (ok, got, text) = s_client(node, PORT, name, &[]).await?;
        ensure!(ok && got == subject, "SNI {name:?}: subject {got:?}, want {subject:?}\n{text}");
    }

    // ALPN h2: curl and h2load.
    let (version, body) = curl("a.test", node, PORT, &ca_file, &["--http2"]).await?;
    ensure!(version == "2" && body == "web proto=https", "a.test over h2: {version} {body:?}");
    if have("h2load", "--version") {
        let out = Command::new("h2load")
            .args(["-n", "40", "-c", "2", "-m", "4"])
            .arg(format!("https://{node}:{PORT}/"))
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains("Application protocol: h2") && text.contains("40 succeeded"),
            "h2load over TLS:\n{text}"
        );
    } else {
        println!("NOTICE: h2load is not installed (Debian package nghttp2-client); its part is skipped");
    }

    // Versions: 1.2 and 1.3 accepted; 1.1 refused by the node (the client is allowed to offer it).
    for v in ["-tls1_2", "-tls1_3"] {
        let (ok, _, text) = s_client(node, PORT, "a.test", &[v]).await?;
        ensure!(ok, "{v} should be accepted\n{text}");
    }
    let (ok, _, text) = s_client(node, PORT, "a.test", &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]).await?;
    ensure!(!ok, "TLS 1.1 was accepted\n{text}");
    ensure!(text.contains("SSL alert number"), "TLS 1.1 should be refused with an alert: {text}");

    // Secrets: no key in get config or /api/v1/state.
    let shown = admin::get_config(&grpc, false).await?.config_json;
    let state = String::from_utf8_lossy(
        &http_get(
            &c.nodes[0].http_addr(),
            "/api/v1/state",
            &[("authorization", &lbfleet_tests::creds().read_bearer())],
        )
        .await?
        .2,
    )
    .into_owned();
    for (what, text) in [("get config", &shown), ("/api/v1/state", &state)] {
        ensure!(text.contains("<redacted>"), "{what} does not show the redacted key:\n{text}");
        ensure!(!text.contains("PRIVATE KEY"), "{what} shows a private key");
        ensure!(text.contains("BEGIN CERTIFICATE"), "{what} should show the certificates");
    }
    let mut client = admin::connect(&grpc).await?;
    let refused = client
        .apply_config(lbfleet_tests::pb::ApplyConfigRequest {
            format: "json".into(),
            body: shown.clone(),
            dry_run: false,
        })
        .await
        .expect_err("the redacted config was accepted");
    ensure!(refused.message().contains("give the key itself"), "{}", refused.message());

    // A key that does not match its certificate: refused, named, the old config keeps serving.
    let mismatched = (a.0.clone(), b.1.clone());
    let refused =
        admin::apply_toml(&grpc, &config(&mismatched, &b)).await.expect_err("a mismatched key was accepted");
    ensure!(
        refused.message().contains("listener \"web-tls\" tls certificate 1")
            && refused.message().contains("does not match"),
        "{}",
        refused.message()
    );
    let bad_pem =
        ("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_string(), a.1.clone());
    let refused = admin::apply_toml(&grpc, &config(&a, &bad_pem)).await.expect_err("a bad PEM was accepted");
    ensure!(refused.message().contains("listener \"web-tls\" tls certificate 2"), "{}", refused.message());
    let (_, body) = curl("a.test", node, PORT, &ca_file, &[]).await?;
    ensure!(body == "web proto=https", "after refusals: {body:?}");

    // Rotation by apply: new handshakes get the new certificate, an open connection goes on.
    let mut open = KeepAlive::open(node, PORT, "a.test", &ca.pem).await?;
    ensure!(
        open.get("a.test").await? == (200, "web proto=https".into()),
        "first request on the open connection"
    );
    let a2 = ca.issue("a.test-2", &["a.test"])?;
    admin::apply_toml(&grpc, &config(&a2, &b)).await.context("apply the rotated certificate")?;
    wait_until("new handshakes to get the rotated certificate", SERVE, || async move {
        let (ok, subject, _) = s_client(node, PORT, "a.test", &[]).await?;
        ensure!(ok && subject == "CN=a.test-2", "still {subject:?}");
        Ok(())
    })
    .await?;
    ensure!(
        open.get("a.test").await? == (200, "web proto=https".into()),
        "the open connection after rotation"
    );

    // Rotation on disk: the file is polled.
    let (ok, subject, text) = s_client(node, FILE_PORT, "file.test", &[]).await?;
    ensure!(ok && subject == "CN=file-1", "file certificate: {subject:?}\n{text}");
    let mut open = KeepAlive::open(node, FILE_PORT, "file.test", &ca.pem).await?;
    ensure!(open.get("file.test").await?.0 == 200, "first request on the file listener");
    let f2 = ca.issue("file-2", &["file.test"])?;
    replace_file(&key_file, &f2.1)?;
    replace_file(&cert_file, &f2.0)?;
    wait_until("new handshakes to get the certificate replaced on disk", SERVE, || async move {
        let (ok, subject, _) = s_client(node, FILE_PORT, "file.test", &[]).await?;
        ensure!(ok && subject == "CN=file-2", "still {subject:?}");
        Ok(())
    })
    .await?;
    ensure!(open.get("file.test").await?.0 == 200, "the open connection after the file changed");

    // A file that cannot be read keeps the last certificate serving.
    std::fs::remove_file(&key_file)?;
    let logs = || c.logs();
    wait_until("the node to report the unreadable key file", SERVE, || {
        let text = logs();
        let key = key_file.display().to_string();
        async move {
            ensure!(text.contains(&format!("key_file {key}")), "not logged yet");
            Ok(())
        }
    })
    .await?;
    let (ok, subject, _) = s_client(node, FILE_PORT, "file.test", &[]).await?;
    ensure!(ok && subject == "CN=file-2", "with the key file gone: {subject:?}");

    let text =
        String::from_utf8_lossy(&http_get(&c.nodes[0].http_addr(), "/metrics", &[]).await?.2).into_owned();
    let series = "lbfleet_tls_handshake_failures_total{node=\"1\",listener=\"web-tls\"}";
    ensure!(
        metric(&text, series).is_some_and(|v| v >= 1.0),
        "{series} should count the TLS 1.1 attempt:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_routes_by_sni_and_backends_are_verified_over_tls() -> Result<()> {
    const NET: u8 = 151;
    const PASS: u16 = 9443;
    const TCP_TLS: u16 = 9444;
    const PLAIN: u16 = 8080;
    if !loopback_ok(Cluster::ip(NET, 1).into()) {
        println!("NOTICE: 127.0.{NET}.0/24 is not usable here; skipping");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("backend CA")?;
    let other_ca = Ca::new("some other CA")?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    let x = ca.issue("x.test", &["x.test"])?;
    let y = ca.issue("y.test", &["y.test"])?;
    let front = ca.issue("tcp.test", &["tcp.test"])?;
    let (bx, _bx) = https_backend(SocketAddr::new(ip(153, 1), 0), "backend-x", &x).await?;
    let (by, _by) = https_backend(SocketAddr::new(ip(153, 2), 0), "backend-y", &y).await?;
    let (echo, _e) = lbfleet_tests::backend::tcp_echo(SocketAddr::new(ip(153, 3), 0)).await?;

    let mut c = Cluster::start(NET, 1, &[])?;
    c.wait_for_leader(ELECTION).await?;
    let node = c.nodes[0].ip;
    let toml = format!(
        "[[pool]]\nname = \"x\"\n[[pool.backend]]\naddr = \"{bx}\"\n[pool.health]\nkind = \"tcp\"\n\n\
         [[pool]]\nname = \"y\"\n[[pool.backend]]\naddr = \"{by}\"\n[pool.health]\nkind = \"tcp\"\n\n\
         [[pool]]\nname = \"echo\"\n[[pool.backend]]\naddr = \"{echo}\"\n[pool.health]\nkind = \"none\"\n\n\
         [[pool]]\nname = \"secure\"\n[[pool.backend]]\naddr = \"{bx}\"\n\
         [pool.health]\nkind = \"http\"\npath = \"/\"\ninterval = \"300ms\"\ntimeout = \"300ms\"\n\
         [pool.tls]\nca_file = \"{}\"\nserver_name = \"x.test\"\n\n\
         [[pool]]\nname = \"wrong\"\n[[pool.backend]]\naddr = \"{by}\"\n[pool.health]\nkind = \"none\"\n\
         [pool.tls]\nca_pem = {}\nserver_name = \"y.test\"\n\n\
         [[listener]]\nname = \"pass\"\nprotocol = \"tcp\"\nport = {PASS}\npool = \"x\"\n\
         [listener.tls]\nmode = \"passthrough\"\n\
         [[listener.sni_route]]\nserver_names = [\"y.test\"]\npool = \"y\"\n\n\
         [[listener]]\nname = \"tcp-tls\"\nprotocol = \"tcp\"\nport = {TCP_TLS}\npool = \"echo\"\n\
         [listener.tls]\n{}\n\
         [[listener]]\nname = \"plain\"\nprotocol = \"http\"\nport = {PLAIN}\npool = \"secure\"\n\
         [[listener.route]]\npath_prefix = \"/wrong\"\npool = \"wrong\"\n",
        ca_file.display(),
        toml_str(&other_ca.pem),
        inline_cert(&[], &front, false),
    );
    admin::apply_toml(&c.nodes[0].grpc_addr(), &toml).await.map_err(|e| anyhow!("apply: {}", e.message()))?;

    // Passthrough: the backend's own certificate reaches the client, which verifies it.
    let ca_path = ca_file.clone();
    wait_until("the passthrough listener to reach backend-y by SNI", SERVE, || {
        let ca_path = ca_path.clone();
        async move {
            let (_, body) = curl("y.test", node, PASS, &ca_path, &[]).await?;
            ensure!(body == "backend-y", "body {body:?}");
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    for _ in 0..3 {
        ensure!(curl("x.test", node, PASS, &ca_file, &[]).await?.1 == "backend-x", "x.test");
        ensure!(curl("y.test", node, PASS, &ca_file, &[]).await?.1 == "backend-y", "y.test");
    }
    // A name no route lists goes to the listener's pool (whose backend's certificate names x.test).
    let (ok, subject, text) = s_client(node, PASS, "nobody.test", &[]).await?;
    ensure!(ok && subject == "CN=x.test", "unrouted SNI: {subject:?}\n{text}");

    // TCP terminate: plaintext to the backend.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes())?)?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(SocketAddr::new(node.into(), TCP_TLS)).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("tcp.test")?, tcp)
        .await
        .context("TLS to the terminating TCP listener")?;
    tls.write_all(b"hello over tls").await?;
    tls.shutdown().await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await??;
    ensure!(answer == b"hello over tls", "tcp terminate: {:?}", String::from_utf8_lossy(&answer));

    // Backend TLS: verified against the pool's CA (its health check passes over TLS), and 502 with
    // a TLS failure against a CA that did not sign the backend's certificate.
    let plain = format!("{node}:{PLAIN}");
    let plain2 = plain.clone();
    wait_until("the TLS pool to answer", SERVE, || {
        let plain = plain2.clone();
        async move {
            let (status, _, body) = http_get(&plain, "/", &[]).await?;
            ensure!(status == 200 && body == "backend-x", "{status} {:?}", String::from_utf8_lossy(&body));
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow!("{e:#}\n{}", c.logs()))?;
    let (status, _, body) = http_get(&plain, "/wrong", &[]).await?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 502 || !body.contains("TLS") {
        bail!("the wrong CA: {status} {body:?}");
    }
    Ok(())
}
