//! A blocking client: one unix-socket connection, one request line out and one reply line in
//! per call. The shim, `carve sched status` and the daemon's tests speak through it.

use crate::{encode, Reply, Request, StatusReport};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The longest reply line a client reads, newline included: far above any real reply (a status
/// of a hundred tenants is some 30 KiB), so that a confused peer cannot make a client buffer
/// without end.
pub const MAX_LINE: usize = 1 << 20;

/// Why a call did not return a reply. After any of these the connection is unusable: drop the
/// client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the socket, or it cannot be opened.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Sending the request or reading the reply failed.
    #[error("the connection to the scheduler failed: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection before a whole reply line.
    #[error("the scheduler closed the connection")]
    Closed,
    /// The reply line is longer than [`MAX_LINE`].
    #[error("the scheduler's reply is longer than {MAX_LINE} bytes")]
    TooLong,
    /// The reply line is not a [`Reply`].
    #[error("the scheduler's reply is not understood: {0}")]
    BadReply(#[source] serde_json::Error),
    /// The daemon answered with [`Reply::Error`] (for [`status`]).
    #[error("the scheduler refused: {0}")]
    Refused(String),
    /// The daemon answered, but not what the request calls for (for [`status`]).
    #[error("unexpected reply from the scheduler: {0:?}")]
    Unexpected(Box<Reply>),
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    /// The socket, read through a buffer and written directly.
    conn: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the daemon's socket.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client {
            conn: BufReader::new(stream),
        })
    }

    /// Sends one request and waits for its reply (as long as the daemon takes: `acquire` waits
    /// for a turn). A [`Reply::Error`] is a reply, returned as such.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.conn.get_mut().write_all(encode(request).as_bytes())?;
        let mut line = Vec::new();
        let limit = MAX_LINE as u64;
        (&mut self.conn).take(limit).read_until(b'\n', &mut line)?;
        match line.last() {
            Some(b'\n') => serde_json::from_slice(&line).map_err(ClientError::BadReply),
            _ if line.len() >= MAX_LINE => Err(ClientError::TooLong),
            _ => Err(ClientError::Closed),
        }
    }
}

/// Asks the daemon at `socket` for its per-tenant figures (`carve sched status`).
pub fn status(socket: &Path) -> Result<StatusReport, ClientError> {
    match Client::connect(socket)?.call(&Request::Status)? {
        Reply::Status { status } => Ok(status),
        Reply::Error { message } => Err(ClientError::Refused(message)),
        other => Err(ClientError::Unexpected(Box::new(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-connection server that reads a request line and answers with `reply` (raw bytes).
    fn serve_once(tag: &str, reply: Vec<u8>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("carve-proto-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sched.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(conn);
            let mut req = String::new();
            r.read_line(&mut req).unwrap();
            assert!(serde_json::from_str::<Request>(&req).is_ok(), "{req:?}");
            let _ = r.get_mut().write_all(&reply);
        });
        path
    }

    #[test]
    fn a_reply_line_is_read() {
        let p = serve_once("ok", encode(&Reply::Grant { until_ns: 7 }).into_bytes());
        let mut c = Client::connect(&p).unwrap();
        assert_eq!(
            c.call(&Request::Acquire).unwrap(),
            Reply::Grant { until_ns: 7 }
        );
    }

    #[test]
    fn failures_are_typed() {
        let missing = std::env::temp_dir().join("carve-proto-nobody-here.sock");
        let e = Client::connect(&missing).unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
        assert!(
            e.to_string().contains("carve-proto-nobody-here.sock"),
            "{e}"
        );

        let p = serve_once("closed", b"{\"reply\":\"yield\"".to_vec());
        let e = Client::connect(&p).unwrap().call(&Request::Acquire);
        assert!(matches!(e, Err(ClientError::Closed)), "{e:?}");

        let p = serve_once("bad", b"{\"reply\":\"maybe\"}\n".to_vec());
        let e = Client::connect(&p).unwrap().call(&Request::Acquire);
        assert!(matches!(e, Err(ClientError::BadReply(_))), "{e:?}");

        let p = serve_once("long", vec![b' '; MAX_LINE + 10]);
        let e = Client::connect(&p).unwrap().call(&Request::Acquire);
        assert!(matches!(e, Err(ClientError::TooLong)), "{e:?}");

        let p = serve_once(
            "refused",
            encode(&Reply::Error {
                message: "no".into(),
            })
            .into_bytes(),
        );
        let e = status(&p).unwrap_err();
        assert!(
            matches!(e, ClientError::Refused(ref m) if m == "no"),
            "{e:?}"
        );
    }

    #[test]
    fn a_line_of_exactly_max_line_is_accepted() {
        let mut line = encode(&Reply::Yield).into_bytes();
        line.pop();
        line.resize(MAX_LINE - 1, b' ');
        line.push(b'\n');
        let p = serve_once("max", line);
        assert_eq!(
            Client::connect(&p)
                .unwrap()
                .call(&Request::Acquire)
                .unwrap(),
            Reply::Yield
        );
    }
}
