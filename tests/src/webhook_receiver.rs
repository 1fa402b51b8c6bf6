//! A webhook receiver for the tests: an HTTP/1.1 server on a loopback address that records
//! every request (its path, `webhook-*` headers and body) and answers 200, or 500 for the
//! first requests to a path told to fail, or holds the first request to a path before
//! answering (to kill its sender meanwhile).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request received.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// The status answered (0: none, the request was held and its sender was gone, or the
    /// answer could not be written).
    pub answered: u16,
    /// Whether the request was held before its answer.
    pub held: bool,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    /// Path -> requests still to fail with 500.
    failing: HashMap<String, u32>,
    /// Path -> how long to hold its next request.
    holding: HashMap<String, Duration>,
}

pub struct Receiver {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Listens on `ip` (a loopback address such as `127.0.0.2`), on a free port.
    pub fn start(ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("binding the webhook receiver");
        let address = listener.local_addr().expect("the receiver's address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Self { address, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The next `count` requests to `path` are answered 500.
    pub fn fail(&self, path: &str, count: u32) {
        self.lock().failing.insert(path.to_owned(), count);
    }

    /// The next request to `path` is held for `time` before its answer.
    pub fn hold(&self, path: &str, time: Duration) {
        self.lock().holding.insert(path.to_owned(), time);
    }

    /// Every request so far to `path`.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Whether a request to `path` is being held now.
    pub fn holding(&self, path: &str) -> bool {
        self.lock()
            .requests
            .iter()
            .any(|r| r.path == path && r.held && r.answered == 0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    // One request per connection is enough: the answer says `connection: close`.
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length.min(1 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
    let (index, hold, status) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let hold = state.holding.remove(&path);
        let status = match state.failing.get_mut(&path) {
            Some(left) if *left > 0 => {
                *left -= 1;
                500
            }
            _ => 200,
        };
        state.requests.push(Request {
            path: path.clone(),
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
            answered: 0,
            held: hold.is_some(),
        });
        (state.requests.len() - 1, hold, status)
    };
    if let Some(time) = hold {
        std::thread::sleep(time);
        // The sender may be gone: a 200 now is not an answer it reads.
        let mut probe = [0u8; 1];
        let _ = writer.set_nonblocking(true);
        let gone = match writer.peek(&mut probe) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        let _ = writer.set_nonblocking(false);
        if gone {
            return;
        }
    }
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let answer =
        format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    if writer
        .write_all(answer.as_bytes())
        .and_then(|()| writer.flush())
        .is_ok()
    {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests[index].answered = status;
    }
}
