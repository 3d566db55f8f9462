//! BIRD 2's control socket: the text protocol `birdc` speaks, used to enable or disable the static
//! protocol that holds the VIP route ([`PROTOCOL`]).
//!
//! On connect BIRD greets with `0001 BIRD 2.0.12 ready.`; each command is one line, and its reply is
//! lines of a four-digit code and a text, `-` after the code on every line but the last, a space on
//! the last. Codes from 8000 up are errors (`9001 syntax error, …` for an unknown protocol name).
//! [`parse_reply`] is the pure part; [`Control`] does the I/O, every step under [`IO_TIMEOUT`] and
//! every reply within [`MAX_REPLY_BYTES`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The static protocol of the speaker's config that holds the VIP route: lbnode enables it to
/// announce the VIP and disables it to withdraw it. The config should declare it `disabled`.
pub const PROTOCOL: &str = "lbfleet_vip";
/// How long a connect, a command or its reply may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest reply read.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// A failed exchange with BIRD.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot reach BIRD's control socket {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("BIRD's control socket {path}: {what}")]
    Io { path: PathBuf, what: String },
    #[error("BIRD refused \"{command}\": {code} {text}")]
    Refused { command: String, code: u16, text: String },
    #[error("BIRD's reply to \"{command}\" is malformed: {line:?}")]
    Malformed { command: String, line: String },
}

/// One line of a reply: its code (`None` on a line continuing the previous code with a leading
/// space), whether more lines follow, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub code: Option<u16>,
    pub last: bool,
    pub text: String,
}

/// Parse one reply line (without its newline). `None`: not a line of the protocol.
pub fn parse_line(line: &str) -> Option<Line> {
    if let Some(rest) = line.strip_prefix(' ') {
        return Some(Line { code: None, last: false, text: rest.to_string() });
    }
    let bytes = line.as_bytes();
    if bytes.len() < 5 || !bytes[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u16 = line[..4].parse().ok()?;
    let last = match bytes[4] {
        b' ' => true,
        b'-' => false,
        _ => return None,
    };
    Some(Line { code: Some(code), last, text: line[5..].to_string() })
}

/// What a whole reply says: `Ok(lines' texts)` or the first error code with its text.
pub fn parse_reply(lines: &[Line]) -> Result<Vec<String>, (u16, String)> {
    if let Some(err) = lines.iter().find(|l| l.code.is_some_and(|c| c >= 8000)) {
        return Err((err.code.unwrap_or(0), err.text.clone()));
    }
    Ok(lines.iter().filter(|l| !l.text.is_empty()).map(|l| l.text.clone()).collect())
}

/// The command that puts the VIP's protocol into the wanted state.
pub fn command(announce: bool) -> String {
    format!("{} {PROTOCOL}", if announce { "enable" } else { "disable" })
}

/// A client of one BIRD control socket (a connection per command: BIRD may restart in between).
#[derive(Debug, Clone)]
pub struct Control {
    path: PathBuf,
}

impl Control {
    pub fn new(path: &Path) -> Control {
        Control { path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Announce (`true`) or withdraw (`false`) the VIP.
    pub async fn set_announced(&self, announce: bool) -> Result<(), BirdError> {
        self.run(&command(announce)).await.map(|_| ())
    }

    /// Send one command and return the texts of its reply.
    pub async fn run(&self, command: &str) -> Result<Vec<String>, BirdError> {
        let io = |what: String| BirdError::Io { path: self.path.clone(), what };
        let stream = tokio::time::timeout(IO_TIMEOUT, UnixStream::connect(&self.path))
            .await
            .map_err(|_| io(format!("no connection within {IO_TIMEOUT:?}")))?
            .map_err(|source| BirdError::Connect { path: self.path.clone(), source })?;
        let mut stream = BufReader::new(stream);
        let exchange = async {
            // The greeting is a reply of its own.
            self.read_reply(&mut stream, "(greeting)").await?;
            stream
                .get_mut()
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(|e| io(format!("cannot send \"{command}\": {e}")))?;
            self.read_reply(&mut stream, command).await
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| io(format!("no reply to \"{command}\" within {IO_TIMEOUT:?}")))?
    }

    async fn read_reply(
        &self,
        stream: &mut BufReader<UnixStream>,
        command: &str,
    ) -> Result<Vec<String>, BirdError> {
        let mut lines = Vec::new();
        let mut read = 0usize;
        loop {
            let mut raw = String::new();
            let n = (&mut *stream)
                .take((MAX_REPLY_BYTES - read) as u64 + 1)
                .read_line(&mut raw)
                .await
                .map_err(|e| BirdError::Io { path: self.path.clone(), what: format!("read: {e}") })?;
            read += n;
            if n == 0 {
                return Err(BirdError::Io {
                    path: self.path.clone(),
                    what: format!("closed before the end of the reply to \"{command}\""),
                });
            }
            if read > MAX_REPLY_BYTES {
                return Err(BirdError::Io {
                    path: self.path.clone(),
                    what: format!("reply to \"{command}\" longer than {MAX_REPLY_BYTES} bytes"),
                });
            }
            let text = raw.trim_end_matches(['\n', '\r']);
            let line = parse_line(text).ok_or_else(|| BirdError::Malformed {
                command: command.to_string(),
                line: text.chars().take(200).collect(),
            })?;
            let last = line.last;
            lines.push(line);
            if last {
                break;
            }
        }
        parse_reply(&lines).map_err(|(code, text)| BirdError::Refused {
            command: command.to_string(),
            code,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Vec<Line> {
        text.lines().map(|l| parse_line(l).unwrap()).collect()
    }

    #[test]
    fn an_enable_reply_is_a_success_with_its_text() {
        let r = reply("0011-lbfleet_vip: enabled\n0000 ");
        assert_eq!(r[0], Line { code: Some(11), last: false, text: "lbfleet_vip: enabled".into() });
        assert!(r[1].last);
        assert_eq!(parse_reply(&r), Ok(vec!["lbfleet_vip: enabled".to_string()]));
    }

    #[test]
    fn an_unknown_protocol_is_an_error_naming_bird_s_words() {
        let r =
            reply("9001 syntax error, unexpected CF_SYM_UNDEFINED, expecting CF_SYM_KNOWN or TEXT or ALL");
        assert_eq!(parse_reply(&r).unwrap_err().0, 9001);
    }

    #[test]
    fn continuation_lines_and_tables_parse() {
        let r = reply("2002-Name       Proto\n1002-lbfleet_vip Static\n continued\n0000 ");
        assert_eq!(r[2].code, None);
        assert_eq!(parse_reply(&r).unwrap().len(), 3);
    }

    #[test]
    fn lines_outside_the_protocol_are_refused() {
        for bad in ["", "001 x", "00a1 x", "0001x", "hello world"] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_commands_name_the_vip_protocol() {
        assert_eq!(command(true), "enable lbfleet_vip");
        assert_eq!(command(false), "disable lbfleet_vip");
    }
}
