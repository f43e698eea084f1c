//! The API socket's thread: accepts clients on the Unix socket of `vmm run
//! --api-sock PATH`, reads one request from each, answers it through
//! [`super::routes::route`] and closes the connection.
//!
//! One client at a time, on one thread that waits in `poll` on three
//! descriptors (its stop, the listening socket, the current client):
//! - a second client that connects while one is being served gets 503 at
//!   once and is closed;
//! - a client that has not sent a whole request within [`READ_DEADLINE`]
//!   gets 408 and is closed, so a slow or silent client holds the socket
//!   for at most that long;
//! - a response the client does not read within [`WRITE_DEADLINE`] is cut
//!   off.
//!
//! The thread installs its own seccomp filter (`ThreadKind::Api`) before
//! it reads a byte, and removes the socket file when it stops. It must
//! never take a lock a vCPU takes, and never let a client's bytes reach
//! anything but the parser.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{self, HttpError, Parsed, Response};
use super::routes::{route, VmControl};
use crate::worker::{Stop, Worker};

/// Longest a client may take to send its whole request.
pub const READ_DEADLINE: Duration = Duration::from_secs(2);
/// Longest a client may take to read its response.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(2);

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("--api-sock {0}: another process is listening there")]
    InUse(PathBuf),
    #[error("--api-sock {0}: the path exists and is not a socket; remove it or choose another")]
    NotASocket(PathBuf),
    #[error("--api-sock {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot spawn the API thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Binds the socket at `path`. A socket left there by a VMM that is gone
/// (nobody accepts on it) is replaced; a live one, or a file that is not a
/// socket, is refused.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ApiError::NotASocket(path.to_path_buf()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(ApiError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(path);
            }
            Err(source) => {
                return Err(ApiError::Bind {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    let bind_err = |source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// The running API thread; stopping (or dropping) it joins the thread,
/// which removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    worker: Worker<()>,
}

impl ApiServer {
    /// Serves `listener` (from [`bind`] at `path`) with `vm`.
    pub fn spawn(
        listener: UnixListener,
        path: PathBuf,
        vm: Arc<dyn VmControl + Send + Sync>,
    ) -> Result<Self, ApiError> {
        let worker = Worker::spawn("api", move |stop: &Stop| {
            crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Api);
            serve(&listener, stop, vm.as_ref());
            drop(listener);
            let _ = std::fs::remove_file(&path);
        })
        .map_err(ApiError::Spawn)?;
        Ok(Self { worker })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.worker.stop();
    }
}

/// The client being served.
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

/// What reading from the client gave.
enum Read1 {
    /// A whole request: route it, answer and close.
    Request(http::Request),
    /// Answer this (a refusal) and close.
    Answer(Response),
    /// Wait for more bytes.
    More,
    /// The client went away (or broke the connection): close, no answer.
    Gone,
}

/// Accepts and answers clients until `stop` is set.
pub fn serve(listener: &UnixListener, stop: &Stop, vm: &dyn VmControl) {
    let mut client: Option<Client> = None;
    loop {
        let timeout = client.as_ref().map(|c| c.deadline);
        let (stopped, incoming, readable) = wait(stop, listener, client.as_ref(), timeout);
        if stopped || stop.is_set() {
            return;
        }
        if incoming {
            accept_all(listener, &mut client);
        }
        let Some(c) = client.as_mut() else {
            continue;
        };
        let outcome = if readable {
            read_some(c)
        } else if Instant::now() >= c.deadline {
            Read1::Answer(Response::fault(
                408,
                &format!(
                    "no whole request within {} s; closed",
                    READ_DEADLINE.as_secs()
                ),
            ))
        } else {
            Read1::More
        };
        match outcome {
            Read1::More => {}
            Read1::Gone => client = None,
            Read1::Request(req) => {
                if let Some(c) = client.take() {
                    answer(c.stream, &route(&req, vm));
                }
            }
            Read1::Answer(r) => {
                if let Some(c) = client.take() {
                    answer(c.stream, &r);
                }
            }
        }
    }
}

/// Waits for the stop, a new connection or the client's bytes, until
/// `deadline`. Returns which were ready.
fn wait(
    stop: &Stop,
    listener: &UnixListener,
    client: Option<&Client>,
    deadline: Option<Instant>,
) -> (bool, bool, bool) {
    let mut fds = [
        libc::pollfd {
            fd: stop.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: client.map_or(-1, |c| c.stream.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = deadline.map_or(-1, |d| {
        let left = d.saturating_duration_since(Instant::now());
        i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
    });
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd for the call; a
    // negative fd is ignored by poll.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        // A timeout, or EINTR: the caller looks at the deadline again.
        return (false, false, false);
    }
    (
        fds[0].revents != 0,
        fds[1].revents != 0,
        fds[2].revents != 0,
    )
}

/// Accepts every waiting connection: the first becomes the client if there
/// is none; the others are told to come back later.
fn accept_all(listener: &UnixListener, client: &mut Option<Client>) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, say: the client waits in the backlog
                // and is tried again at the next wake.
                log::warn!("api: cannot accept a client: {e}");
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if client.is_some() {
            turn_away(stream);
            continue;
        }
        *client = Some(Client {
            stream,
            buf: Vec::with_capacity(512),
            deadline: Instant::now() + READ_DEADLINE,
        });
    }
}

/// Longest the server waits for a turned-away client's request.
const TURN_AWAY_WAIT: Duration = Duration::from_millis(100);

/// Answers 503 to a client that came while another is served. Its request
/// is read first (for at most [`TURN_AWAY_WAIT`]): closing a socket with
/// unread bytes resets the connection, and the client would lose the 503.
fn turn_away(stream: UnixStream) {
    let mut c = Client {
        stream,
        buf: Vec::new(),
        deadline: Instant::now() + TURN_AWAY_WAIT,
    };
    loop {
        let left = c.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !ready(&c.stream, libc::POLLIN, left) {
            break;
        }
        if !matches!(read_some(&mut c), Read1::More) {
            break;
        }
    }
    answer(
        c.stream,
        &Response::fault(503, "another client is being served; one at a time"),
    );
}

/// Reads what the client sent and parses it.
fn read_some(c: &mut Client) -> Read1 {
    let mut chunk = [0u8; 4096];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => return Read1::Gone,
            Ok(n) => {
                // The parser refuses a head or body past its limits, so
                // the buffer stays below MAX_HEAD + MAX_BODY + one chunk.
                c.buf.extend_from_slice(&chunk[..n]);
                match http::parse(&c.buf) {
                    Ok(Parsed::Partial) => continue,
                    Ok(Parsed::Done(req, _)) => return Read1::Request(req),
                    Err(e) => return Read1::Answer(refusal(&e)),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Read1::More,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Read1::Gone,
        }
    }
}

/// The answer to a request that could not be read.
fn refusal(e: &HttpError) -> Response {
    Response::fault(e.status(), &e.to_string())
}

/// Writes `r` to `stream` within [`WRITE_DEADLINE`], then closes it.
fn answer(mut stream: UnixStream, r: &Response) {
    let bytes = r.to_bytes();
    let deadline = Instant::now() + WRITE_DEADLINE;
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !ready(&stream, libc::POLLOUT, left) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Waits up to `left` for `stream` to be ready for `events` (`POLLIN`:
/// bytes to read; `POLLOUT`: room to write).
fn ready(stream: &UnixStream, events: i16, left: Duration) -> bool {
    let mut fd = [libc::pollfd {
        fd: stream.as_raw_fd(),
        events,
        revents: 0,
    }];
    let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the call.
    let n = unsafe { libc::poll(fd.as_mut_ptr(), 1, ms) };
    n == 1 && fd[0].revents != 0
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::api::client::request;

    /// A VMM that only records.
    #[derive(Default)]
    struct Fake {
        budgets: Mutex<Vec<Option<u64>>>,
    }

    impl VmControl for Fake {
        fn vm(&self) -> serde_json::Value {
            serde_json::json!({"state": "running"})
        }
        fn stats(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn memory(&self) -> serde_json::Value {
            serde_json::json!({"frames": {"stable": 1}})
        }
        fn set_budget(&self, bytes: Option<u64>) -> Result<(), String> {
            self.budgets.lock().unwrap().push(bytes);
            Ok(())
        }
        fn stop(&self) {}
    }

    fn socket(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-api-{tag}-{}.sock", std::process::id()))
    }

    fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_requests_refuses_garbage_and_removes_its_socket() {
        let path = socket("serve");
        let fake = Arc::new(Fake::default());
        let server = ApiServer::spawn(bind(&path).unwrap(), path.clone(), fake.clone()).unwrap();
        let a = request(&path, "GET", "/memory", "").unwrap();
        assert_eq!(
            (a.status, a.body.as_str()),
            (200, "{\"frames\":{\"stable\":1}}")
        );
        let a = request(&path, "PATCH", "/memory", "{\"budget_bytes\": 4096}").unwrap();
        assert_eq!(a.status, 204);
        assert_eq!(*fake.budgets.lock().unwrap(), vec![Some(4096)]);
        let bad = raw(&path, b"GET /vm HTTP/1.1\r\nContent-Length: x\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        assert!(bad.contains("fault_message"), "{bad}");
        let bad = raw(&path, b"\x00\x01\x02 garbage\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        let huge = vec![b'a'; http::MAX_HEAD + 100];
        assert!(raw(&path, &huge).starts_with("HTTP/1.1 413 "));
        // A second binder finds the socket in use.
        assert!(matches!(bind(&path), Err(ApiError::InUse(_))));
        server.stop();
        assert!(!path.exists(), "the socket file is removed on stop");
    }

    #[test]
    fn a_slow_client_times_out_and_a_second_one_is_turned_away_meanwhile() {
        let path = socket("slow");
        let server = ApiServer::spawn(
            bind(&path).unwrap(),
            path.clone(),
            Arc::new(Fake::default()),
        )
        .unwrap();
        // The slow client sends half a request and nothing more.
        let mut slow = UnixStream::connect(&path).unwrap();
        slow.write_all(b"GET /vm HTTP/1.1\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let second = request(&path, "GET", "/vm", "").unwrap();
        assert_eq!(second.status, 503, "{}", second.body);
        let t = Instant::now();
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut out = String::new();
        let _ = slow.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(t.elapsed() < READ_DEADLINE + Duration::from_secs(1));
        // Then the socket serves again.
        assert_eq!(request(&path, "GET", "/vm", "").unwrap().status, 200);
        server.stop();
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_plain_file_refused() {
        let path = socket("stale");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a socket nobody listens on");
        let l = bind(&path).unwrap();
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(bind(&path), Err(ApiError::NotASocket(_))));
        std::fs::remove_file(&path).unwrap();
    }
}
