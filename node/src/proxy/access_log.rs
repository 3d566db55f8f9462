//! The access log: one JSON line per HTTP request, TCP connection or UDP flow of the listeners with
//! `access_log = true`, written to this node's destination (`access_log` in node.toml: stdout or a
//! file).
//!
//! The proxies never wait for it: an [`Entry`] (plain data, no text yet) goes into a bounded queue of
//! [`QUEUE`] entries; a writer thread takes what the queue holds every [`BATCH`], turns the entries
//! into lines and writes them, flushing whenever the queue is empty. When the queue is full the entry is dropped and counted in
//! `lbfleet_access_log_dropped_total`; a write error is logged (at most once per [`WARN_EVERY`]) and
//! its lines are lost, the proxies go on.
//!
//! Fields (absent when they do not apply): `time` (RFC 3339, when the request head or the connection
//! arrived), `type` (`http`, `tcp`, `udp`), `client`, `listener`, `pool`, `backend`, and
//! - HTTP: `method`, `path` (at most [`MAX_PATH`] bytes, then cut), `status`, `bytes_in` (request body),
//!   `bytes_out` (response body), `duration` (seconds, until the response body ended),
//!   `backend_head` (seconds until the backend's response head), `retries`, `complete` (false when the
//!   response body was cut), `tls_version`, `tls_sni` (TLS listeners);
//! - TCP and UDP: `bytes_in` (from the client), `bytes_out` (to it), `duration` (seconds).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use crate::config::AccessLogTarget;

/// Entries waiting for the writer at most; more are dropped (and counted).
pub const QUEUE: usize = 16 * 1024;
/// How often the writer takes the queued entries: a line is written at most this late, and the queue
/// holds [`QUEUE`] entries, a third of a second at 50,000 requests a second.
pub const BATCH: Duration = Duration::from_millis(10);
/// Longest request path logged, in bytes; a longer one is cut at a character boundary.
pub const MAX_PATH: usize = 1024;
/// Fewest seconds between two warnings about failed writes.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a proxy hands over; the writer makes the line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub client: SocketAddr,
    pub listener: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<SocketAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Seconds.
    pub duration: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpFields>,
}

/// The HTTP part of an [`Entry`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpFields {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Seconds from the request head to the backend's response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_head: Option<f64>,
    pub retries: u32,
    pub complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_sni: Option<Arc<str>>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*t))
}

/// `path` cut to at most [`MAX_PATH`] bytes, at a character boundary.
pub fn bounded_path(path: &str) -> String {
    let mut end = path.len().min(MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}

/// The sending side, shared by every proxy task of the node.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Entry>,
    dropped: Counter,
}

impl AccessLog {
    /// Open `target` and start the writer thread; `dropped` counts the entries the queue had no room
    /// for.
    pub fn start(target: &AccessLogTarget, dropped: Counter) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> =
            match target {
                AccessLogTarget::Stdout => Box::new(io::stdout()),
                AccessLogTarget::File(path) => {
                    Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(
                        |e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())),
                    )?)
                }
            };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new().name("lbnode-access-log".into()).spawn(move || write_lines(rx, out))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queue `entry`, or drop and count it when the queue is full.
    pub fn send(&self, entry: Entry) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(entry) {
            self.dropped.inc();
        }
    }
}

/// The writer thread: lines out until every sender is gone; a flush whenever the queue is empty, then
/// a pause of [`BATCH`].
fn write_lines(rx: Receiver<Entry>, out: Box<dyn Write + Send>) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    let mut warned: Option<Instant> = None;
    let mut failed = |e: io::Error| {
        if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!("cannot write the access log: {e}");
            warned = Some(Instant::now());
        }
    };
    loop {
        match rx.try_recv() {
            Ok(entry) => {
                line.clear();
                if serde_json::to_writer(&mut line, &entry).is_ok() {
                    line.push(b'\n');
                    if let Err(e) = out.write_all(&line) {
                        failed(e);
                    }
                }
            }
            Err(empty_or_gone) => {
                if let Err(e) = out.flush() {
                    failed(e);
                }
                if empty_or_gone == TryRecvError::Disconnected {
                    return;
                }
                // Polled, not woken: a proxy task that queues an entry never has to wake this
                // thread (a futex call and a context switch per request under load).
                std::thread::sleep(BATCH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(listener: &str) -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            kind: "tcp",
            client: "127.0.0.1:5000".parse().unwrap(),
            listener: Arc::from(listener),
            pool: Some(Arc::from("db")),
            backend: Some("127.0.0.1:5432".parse().unwrap()),
            bytes_in: 10,
            bytes_out: 20,
            duration: 0.5,
            http: None,
        }
    }

    #[test]
    fn an_l4_entry_is_one_json_object_with_its_fields() {
        let v: serde_json::Value = serde_json::to_value(entry("pg")).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123000Z");
        assert_eq!(v["type"], "tcp");
        assert_eq!(v["listener"], "pg");
        assert_eq!(v["backend"], "127.0.0.1:5432");
        assert_eq!(v["bytes_out"], 20);
        assert!(v.get("method").is_none() && v.get("status").is_none(), "{v}");
    }

    #[test]
    fn an_http_entry_carries_its_request_fields_flat() {
        let mut e = entry("web");
        e.kind = "http";
        e.http = Some(HttpFields {
            method: "GET".into(),
            path: "/a".into(),
            status: 200,
            backend_head: Some(0.25),
            retries: 1,
            complete: true,
            tls_version: Some("TLSv1_3"),
            tls_sni: Some(Arc::from("a.example")),
        });
        let v: serde_json::Value = serde_json::to_value(e).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["backend_head"], 0.25);
        assert_eq!(v["tls_sni"], "a.example");
        assert_eq!(v["retries"], 1);
    }

    #[test]
    fn paths_are_cut_at_the_limit_on_a_character_boundary() {
        assert_eq!(bounded_path("/short"), "/short");
        let long = format!("/{}", "é".repeat(MAX_PATH));
        let cut = bounded_path(&long);
        assert!(cut.len() <= MAX_PATH && cut.len() >= MAX_PATH - 1, "{}", cut.len());
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let log = AccessLog { tx, dropped: Counter::default() };
        log.send(entry("a"));
        log.send(entry("b"));
        log.send(entry("c"));
        assert_eq!(log.dropped.get(), 2);
    }

    #[test]
    fn the_writer_writes_every_entry_to_the_file_as_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(&AccessLogTarget::File(path.clone()), Counter::default()).unwrap();
        for name in ["a", "b", "c"] {
            log.send(entry(name));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 {
                let names: Vec<String> = text
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["listener"].to_string())
                    .collect();
                assert_eq!(names, ["\"a\"", "\"b\"", "\"c\""]);
                break;
            }
            assert!(Instant::now() < deadline, "lines written: {text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
