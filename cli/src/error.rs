//! What can go wrong talking to an lbnode, how it is shown, and which exit code it gives.
//!
//! Pure: [`CliError::from_status`] and [`CliError::unreachable`] classify tonic errors; nothing here does I/O.
//! A raw `Debug` of `tonic::Status` is never shown to the operator.
//!
//! Outcomes are told as they are. A failure of a *write* ([`Effect::Write`]) after its request may have
//! left this machine (the client's deadline passed, the connection was lost once the call was under way,
//! the node answered `deadline_exceeded` or `cancelled`: the entry may still commit) is
//! [`CliError::OutcomeUnknown`], exit [`EXIT_UNKNOWN`]: "may have been applied" is not "failed". A write
//! that never left (connection refused, TLS refused) or that the node refused is a definite failure. A
//! read that timed out changed nothing: exit [`EXIT_UNAVAILABLE`], whichever side's deadline passed.

use std::error::Error as StdError;
use std::time::Duration;

use serde::Serialize;
use tonic::Code;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the request was refused or failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: the endpoint could not be reached.
pub const EXIT_UNREACHABLE: i32 = 2;
/// Exit code: the cluster cannot serve the request now (no leader, no quorum, timeout).
pub const EXIT_UNAVAILABLE: i32 = 3;
/// Exit code: missing or refused credentials.
pub const EXIT_AUTH: i32 = 4;
/// Exit code: a write whose outcome is unknown: it was sent, and may have been applied.
pub const EXIT_UNKNOWN: i32 = 5;
/// Exit code of `config diff` when the file differs from the committed config (`git diff --exit-code`
/// uses 1, which lbctl gives to failures).
pub const EXIT_DIFFERENT: i32 = 10;
/// Exit code: invalid command line (sysexits `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// An error of one `lbctl` command, ready to be shown.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No connection to the endpoint (refused, timed out, lost).
    #[error("cannot reach lbnode at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The node answered `Unavailable` (no leader yet, no quorum, shutting down).
    #[error("{message}")]
    Unavailable { endpoint: String, message: String },
    /// No answer within `--timeout` (a read, or a write that never left).
    #[error("no answer from lbnode at {endpoint} within {}", humantime::format_duration(*timeout))]
    Timeout { endpoint: String, timeout: Duration },
    /// A write was sent but its outcome is unknown: it may have been applied.
    #[error("outcome unknown: {reason}; the change may have been applied (check with `lbctl get config` or `lbctl backends` before repeating it)")]
    OutcomeUnknown { endpoint: String, reason: String },
    /// The node refused the request (invalid argument, unknown pool, rejected config...).
    #[error("{message}")]
    Rejected { endpoint: String, code: Code, message: String },
    /// No credentials, or the node refused them (`unauthenticated`, `permission_denied`, a TLS
    /// handshake that failed on a certificate).
    #[error("{message}")]
    Auth { endpoint: Option<String>, message: String },
    /// Any other server error.
    #[error("lbnode at {endpoint} failed: {message} ({})", code_name(*code))]
    Server { endpoint: String, code: Code, message: String },
    /// A local problem (a file, a bad answer, a failed `local` step).
    #[error("{0:#}")]
    Local(#[from] anyhow::Error),
}

/// The machine-readable form of an error (`--json`).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct JsonError {
    pub kind: &'static str,
    pub endpoint: Option<String>,
    /// gRPC status code name when the server answered.
    pub code: Option<&'static str>,
    /// Every line of the message, in order.
    pub lines: Vec<String>,
    pub exit_code: i32,
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::Unavailable { .. } | CliError::Timeout { .. } => EXIT_UNAVAILABLE,
            CliError::Auth { .. } => EXIT_AUTH,
            CliError::OutcomeUnknown { .. } => EXIT_UNKNOWN,
            CliError::Rejected { .. } | CliError::Server { .. } | CliError::Local(_) => EXIT_FAILED,
        }
    }

    /// A failed connection attempt, described by the innermost I/O cause when there is one.
    pub fn unreachable(endpoint: &str, err: &(dyn StdError + 'static)) -> CliError {
        let reason = transport_reason(err);
        if reason.contains("certificate") {
            return CliError::Auth {
                endpoint: Some(endpoint.to_string()),
                message: format!(
                    "TLS with lbnode at {endpoint} failed: {reason} (is --ca / LBCTL_CA this cluster's CA?)"
                ),
            };
        }
        CliError::Unreachable { endpoint: endpoint.to_string(), reason }
    }

    /// Classify a failed call of kind `effect` to `endpoint` (see the module doc).
    pub fn of_call(endpoint: &str, status: &tonic::Status, effect: Effect) -> CliError {
        let err = CliError::from_status(endpoint, status);
        if effect == Effect::Read {
            return match err {
                CliError::Server { endpoint, code: Code::Cancelled, message } => CliError::Unavailable {
                    endpoint,
                    message: format!("the request was cut short: {message}"),
                },
                other => other,
            };
        }
        match err {
            // The connection failed before anything was sent: not applied.
            e @ CliError::Unreachable { .. } if !sent(status) => e,
            CliError::Unreachable { endpoint, reason } if reason == "timed out" => CliError::OutcomeUnknown {
                reason: format!("no answer from lbnode at {endpoint} in time"),
                endpoint,
            },
            CliError::Unreachable { endpoint, reason } => CliError::OutcomeUnknown {
                reason: format!(
                    "the connection to lbnode at {endpoint} was lost during the request ({reason})"
                ),
                endpoint,
            },
            CliError::Unavailable { endpoint, message } if status.code() == Code::DeadlineExceeded => {
                CliError::OutcomeUnknown { endpoint, reason: unknown_reason(&message) }
            }
            CliError::Server { endpoint, code: Code::Cancelled, message } => CliError::OutcomeUnknown {
                reason: format!("lbnode at {endpoint} cut the request short ({message})"),
                endpoint,
            },
            other => other,
        }
    }

    /// The client's own deadline passed while waiting for the answer to a call of kind `effect`.
    pub fn deadline(endpoint: &str, timeout: Duration, effect: Effect) -> CliError {
        match effect {
            Effect::Read => CliError::Timeout { endpoint: endpoint.to_string(), timeout },
            Effect::Write => CliError::OutcomeUnknown {
                endpoint: endpoint.to_string(),
                reason: format!(
                    "no answer from lbnode at {endpoint} within {}",
                    humantime::format_duration(timeout)
                ),
            },
        }
    }

    /// Classify a gRPC status returned by a call to `endpoint`, without regard to what the call does
    /// (see [`CliError::of_call`]).
    pub fn from_status(endpoint: &str, status: &tonic::Status) -> CliError {
        let endpoint = endpoint.to_string();
        // A status built by the client from a transport failure carries that failure as its source; one
        // sent by the server does not.
        // (Deadlines are enforced by the caller's own timer and reported as `Timeout`.)
        if let Some(src) = status.source() {
            return CliError::unreachable(&endpoint, src);
        }
        let message = if status.message().trim().is_empty() {
            status.code().description().to_string()
        } else {
            status.message().trim_end().to_string()
        };
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => CliError::Auth {
                message: format!("lbnode at {endpoint} refused the credentials: {message}"),
                endpoint: Some(endpoint),
            },
            Code::Unavailable | Code::DeadlineExceeded => CliError::Unavailable { endpoint, message },
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::Aborted => CliError::Rejected { endpoint, code: status.code(), message },
            Code::Unimplemented => CliError::Server {
                endpoint,
                code: Code::Unimplemented,
                message: format!("it does not serve this lbfleet Admin call: {message}"),
            },
            code => CliError::Server { endpoint, code, message },
        }
    }

    /// The lines shown on standard error, each already prefixed as it should be printed.
    ///
    /// The first line reads `lbctl: ...`; further lines of a multi-line server message (one per rejected
    /// config problem, for example) follow unchanged.
    pub fn render(&self) -> Vec<String> {
        let text = self.to_string();
        let mut lines = text.lines();
        let mut out = Vec::new();
        let first = lines.next().unwrap_or("");
        match self {
            CliError::Unavailable { endpoint, .. } => {
                out.push(format!("lbctl: {first} (lbnode at {endpoint})"));
            }
            _ => out.push(format!("lbctl: {first}")),
        }
        out.extend(lines.map(str::to_string));
        out
    }

    pub fn to_json(&self) -> JsonError {
        let (kind, endpoint, code) = match self {
            CliError::Unreachable { endpoint, .. } => ("unreachable", Some(endpoint.clone()), None),
            CliError::Unavailable { endpoint, .. } => {
                ("unavailable", Some(endpoint.clone()), Some(code_name(Code::Unavailable)))
            }
            CliError::Timeout { endpoint, .. } => ("timeout", Some(endpoint.clone()), None),
            CliError::Rejected { endpoint, code, .. } => {
                ("rejected", Some(endpoint.clone()), Some(code_name(*code)))
            }
            CliError::Server { endpoint, code, .. } => {
                ("server", Some(endpoint.clone()), Some(code_name(*code)))
            }
            CliError::Auth { endpoint, .. } => ("auth", endpoint.clone(), None),
            CliError::OutcomeUnknown { endpoint, .. } => ("outcome_unknown", Some(endpoint.clone()), None),
            CliError::Local(_) => ("local", None, None),
        };
        JsonError {
            kind,
            endpoint,
            code,
            lines: self.to_string().lines().map(str::to_string).collect(),
            exit_code: self.exit_code(),
        }
    }
}

/// What a call does, which decides how a failure after sending it is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Changes nothing: a failure is a failure.
    Read,
    /// May change the cluster: a failure after the request left is an unknown outcome.
    Write,
}

/// Whether the request behind a client-side transport failure may have left: only a failure to
/// connect (refused, unreachable, a TLS handshake refused) proves it did not.
fn sent(status: &tonic::Status) -> bool {
    let Some(src) = status.source() else { return true };
    let mut cur: Option<&(dyn StdError + 'static)> = Some(src);
    while let Some(e) = cur {
        if let Some(ioe) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                ioe.kind(),
                K::ConnectionRefused | K::AddrNotAvailable | K::NetworkUnreachable | K::HostUnreachable
            ) {
                return false;
            }
        }
        let msg = e.to_string();
        if msg.contains("tcp connect error") || msg.contains("certificate") || msg.contains("handshake") {
            return false;
        }
        cur = e.source();
    }
    true
}

/// The reason of a node's `deadline_exceeded` answer to a write, without repeating what
/// [`CliError::OutcomeUnknown`] says anyway.
fn unknown_reason(message: &str) -> String {
    let m = message.trim_end();
    let m = m.strip_prefix("outcome unknown: ").unwrap_or(m);
    let m = m.strip_suffix("; it may have been applied").unwrap_or(m);
    let m = m.strip_suffix("; it may still be applied").unwrap_or(m);
    m.to_string()
}

/// gRPC code as the snake_case name used in `--json` output.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Short reason for a transport failure: the innermost `std::io::Error` kind when there is one
/// ("connection refused"), else the innermost message.
pub fn transport_reason(err: &(dyn StdError + 'static)) -> String {
    let mut innermost = String::new();
    let mut io: Option<&std::io::Error> = None;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(ioe) = e.downcast_ref::<std::io::Error>() {
            io = Some(ioe);
        }
        if e.is::<tonic::TimeoutExpired>() {
            return "timed out".to_string();
        }
        let msg = e.to_string();
        if !msg.is_empty() {
            innermost = msg;
        }
        cur = e.source();
    }
    match io {
        Some(ioe) => io_reason(ioe),
        None if innermost.is_empty() => "connection failed".to_string(),
        None => innermost,
    }
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::AddrNotAvailable
        | K::BrokenPipe
        | K::TimedOut
        | K::UnexpectedEof => e.kind().to_string(),
        _ => {
            // Drop the " (os error N)" suffix: the words are enough for an operator.
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Box<dyn StdError + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.1)
        }
    }

    const EP: &str = "127.0.0.11:7400";

    #[test]
    fn connection_refused_names_the_endpoint_and_exits_2() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = Wrap("transport error", Box::new(Wrap("tcp connect error", Box::new(io))));
        let e = CliError::unreachable(EP, &err);
        assert_eq!(e.render(), vec!["lbctl: cannot reach lbnode at 127.0.0.11:7400: connection refused"]);
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(e.to_json().kind, "unreachable");
    }

    #[test]
    fn os_error_suffix_is_dropped() {
        let io = std::io::Error::from_raw_os_error(libc::ENETUNREACH);
        let reason = transport_reason(&io);
        assert!(!reason.contains("os error"), "{reason}");
        assert!(!reason.is_empty());
    }

    #[test]
    fn non_io_transport_error_uses_the_innermost_message() {
        #[derive(Debug)]
        struct Leaf(&'static str);
        impl std::fmt::Display for Leaf {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl StdError for Leaf {}
        let err = Wrap("transport error", Box::new(Wrap("h2 protocol error: bad frame", Box::new(Leaf("")))));
        assert_eq!(transport_reason(&err), "h2 protocol error: bad frame");
        assert_eq!(transport_reason(&Leaf("")), "connection failed");
    }

    #[test]
    fn a_connect_timeout_reads_timed_out() {
        let err = Wrap("transport error", Box::new(tonic::TimeoutExpired(())));
        assert_eq!(transport_reason(&err), "timed out");
        let io = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(transport_reason(&io), "timed out");
    }

    #[test]
    fn status_from_transport_failure_is_unreachable() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let status = tonic::Status::from_error(Box::new(io));
        let e = CliError::from_status(EP, &status);
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(e.to_string(), "cannot reach lbnode at 127.0.0.11:7400: connection reset");
    }

    #[test]
    fn unavailable_message_is_printed_as_sent_and_exits_3() {
        let e = CliError::from_status(EP, &tonic::Status::unavailable("no leader yet"));
        assert_eq!(e.exit_code(), EXIT_UNAVAILABLE);
        assert_eq!(e.render(), vec!["lbctl: no leader yet (lbnode at 127.0.0.11:7400)"]);
        let e = CliError::from_status(EP, &tonic::Status::unavailable("no quorum: 1 of 3 voters reachable"));
        assert!(e.render()[0].contains("no quorum: 1 of 3 voters reachable"));
        let j = e.to_json();
        assert_eq!((j.kind, j.code, j.exit_code), ("unavailable", Some("unavailable"), 3));
    }

    #[test]
    fn rejected_config_prints_every_line_and_exits_1() {
        let msg = "config rejected: 2 problems\n  - pool \"web\": unknown policy \"magic\"\n  - listener \"x\": pool \"nope\" does not exist";
        let e = CliError::from_status(EP, &tonic::Status::invalid_argument(msg));
        assert_eq!(e.exit_code(), EXIT_FAILED);
        assert_eq!(
            e.render(),
            vec![
                "lbctl: config rejected: 2 problems",
                "  - pool \"web\": unknown policy \"magic\"",
                "  - listener \"x\": pool \"nope\" does not exist",
            ]
        );
        let j = e.to_json();
        assert_eq!(j.lines.len(), 3);
        assert_eq!(j.code, Some("invalid_argument"));
    }

    #[test]
    fn not_found_and_failed_precondition_are_rejections() {
        for status in [
            tonic::Status::not_found("no backend 1.2.3.4:5 in pool \"web\""),
            tonic::Status::failed_precondition("x"),
        ] {
            let e = CliError::from_status(EP, &status);
            assert!(matches!(e, CliError::Rejected { .. }));
            assert_eq!(e.exit_code(), 1);
            assert!(!e.to_string().contains("Status {"), "never a Debug of Status");
        }
    }

    #[test]
    fn other_codes_name_the_endpoint_and_code() {
        let e = CliError::from_status(EP, &tonic::Status::internal("sled: disk full"));
        assert_eq!(e.to_string(), "lbnode at 127.0.0.11:7400 failed: sled: disk full (internal)");
        assert_eq!(e.exit_code(), 1);
        let e = CliError::from_status(EP, &tonic::Status::new(Code::Internal, ""));
        assert!(e.to_string().contains("Internal error"), "{e}");
    }

    #[test]
    fn timeout_exits_3() {
        let e = CliError::Timeout { endpoint: EP.into(), timeout: Duration::from_secs(10) };
        assert_eq!(e.to_string(), "no answer from lbnode at 127.0.0.11:7400 within 10s");
        assert_eq!(e.exit_code(), EXIT_UNAVAILABLE);
    }

    #[test]
    fn local_errors_show_their_context_chain() {
        let e: CliError =
            anyhow::anyhow!("No such file or directory").context("cannot read \"c.toml\"").into();
        assert_eq!(e.to_string(), "cannot read \"c.toml\": No such file or directory");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_write_without_an_answer_may_have_been_applied_and_exits_5() {
        let e = CliError::deadline(EP, Duration::from_secs(2), Effect::Write);
        assert_eq!(e.exit_code(), EXIT_UNKNOWN);
        assert!(e
            .to_string()
            .starts_with("outcome unknown: no answer from lbnode at 127.0.0.11:7400 within 2s"));
        assert!(e.to_string().contains("may have been applied"), "{e}");
        assert_eq!(e.to_json().kind, "outcome_unknown");
        // The same deadline on a read changed nothing.
        let e = CliError::deadline(EP, Duration::from_secs(2), Effect::Read);
        assert_eq!(e.exit_code(), EXIT_UNAVAILABLE);
        assert!(!e.to_string().contains("may have been applied"), "{e}");
    }

    #[test]
    fn a_connection_lost_during_a_write_is_unknown_but_a_refused_one_is_not() {
        let reset =
            tonic::Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        let e = CliError::of_call(EP, &reset, Effect::Write);
        assert_eq!(e.exit_code(), EXIT_UNKNOWN, "{e}");
        assert!(e.to_string().contains("connection reset"), "{e}");
        assert_eq!(CliError::of_call(EP, &reset, Effect::Read).exit_code(), EXIT_UNREACHABLE);
        let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        let e = CliError::of_call(EP, &expired, Effect::Write);
        assert_eq!(e.exit_code(), EXIT_UNKNOWN, "{e}");
        assert!(e.to_string().starts_with("outcome unknown: no answer from lbnode"), "{e}");

        let refused = tonic::Status::from_error(Box::new(Wrap(
            "tcp connect error",
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        )));
        let e = CliError::of_call(EP, &refused, Effect::Write);
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE, "nothing was sent: {e}");
        assert_eq!(e.to_string(), "cannot reach lbnode at 127.0.0.11:7400: connection refused");
    }

    #[test]
    fn the_nodes_unknown_answers_to_a_write_exit_5_and_server_deadlines_on_reads_exit_3() {
        let msg =
            "no quorum: apply_config not committed within 5s (leader 2, term 9); fewer than a majority \
                   of voters are answering; it may still be applied";
        let e = CliError::of_call(EP, &tonic::Status::deadline_exceeded(msg), Effect::Write);
        assert_eq!(e.exit_code(), EXIT_UNKNOWN);
        let text = e.to_string();
        assert!(text.starts_with("outcome unknown: no quorum: apply_config not committed"), "{text}");
        assert_eq!(text.matches("may").count(), 1, "said once: {text}");
        // The server's own request timeout (`cancelled`) cut a write short: unknown; a read: exit 3.
        let cut = tonic::Status::cancelled("Timeout expired");
        assert_eq!(CliError::of_call(EP, &cut, Effect::Write).exit_code(), EXIT_UNKNOWN);
        let e = CliError::of_call(EP, &cut, Effect::Read);
        assert_eq!(e.exit_code(), EXIT_UNAVAILABLE, "{e}");
        let e = CliError::of_call(EP, &tonic::Status::deadline_exceeded("read not confirmed"), Effect::Read);
        assert_eq!(e.exit_code(), EXIT_UNAVAILABLE);
        // Definite answers stay definite.
        for (status, code) in [
            (tonic::Status::unavailable("no leader reachable"), EXIT_UNAVAILABLE),
            (tonic::Status::invalid_argument("rejected: x"), EXIT_FAILED),
            (tonic::Status::permission_denied("read token"), EXIT_AUTH),
        ] {
            assert_eq!(CliError::of_call(EP, &status, Effect::Write).exit_code(), code, "{status:?}");
        }
    }
}
