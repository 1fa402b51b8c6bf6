//! A TCP proxy a test puts between a client and a service to make the service vanish (for good
//! or for a while) or the network drop its connections, at the moment the test chooses.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP proxy on a free loopback port that forwards every connection to `target`, until
/// [`TcpProxy::cut`] closes the listener and every connection in both directions. Between
/// [`TcpProxy::go_down`] and [`TcpProxy::come_up`] it drops every connection at once, as a
/// service being restarted does. Between [`TcpProxy::freeze`] and [`TcpProxy::thaw`] it
/// accepts and reads but forwards nothing, as a service that hangs (a stopped process, a
/// stalled disk) does.
pub struct TcpProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    hold: Arc<Mutex<Option<Hold>>>,
    drop_next: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    /// What the service sent to its clients so far (the first 64 KiB).
    from_service: Arc<Mutex<Vec<u8>>>,
    /// What the clients sent to the service so far (the first 64 KiB).
    from_clients: Arc<Mutex<Vec<u8>>>,
}

/// Appends `bytes` to `record`, up to its first 64 KiB.
fn record(record: &Mutex<Vec<u8>>, bytes: &[u8]) {
    let mut record = record.lock().unwrap();
    let room = (64 * 1024usize).saturating_sub(record.len());
    record.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// See [`TcpProxy::hold_replies_to`].
#[derive(Clone)]
struct Hold {
    request_end: Vec<u8>,
    delay: Duration,
}

impl TcpProxy {
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let frozen2 = frozen.clone();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let target = target.to_owned();
        let (cut2, down2, streams2) = (cut.clone(), down.clone(), streams.clone());
        let hold: Arc<Mutex<Option<Hold>>> = Arc::default();
        let hold2 = hold.clone();
        let drop_next: Arc<AtomicBool> = Arc::default();
        let drop_next2 = drop_next.clone();
        let from_service: Arc<Mutex<Vec<u8>>> = Arc::default();
        let from_clients: Arc<Mutex<Vec<u8>>> = Arc::default();
        let (served, sent) = (from_service.clone(), from_clients.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if cut2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if down2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                let mut held = streams2.lock().unwrap();
                for s in [&client, &upstream] {
                    if let Ok(clone) = s.try_clone() {
                        held.push(clone);
                    }
                }
                drop(held);
                // Set when the client's bytes end a request the service's reply is held to.
                let armed = Arc::new(AtomicBool::new(false));
                for (mut from, mut to, from_client) in [
                    (client.try_clone(), upstream.try_clone(), true),
                    (upstream.try_clone(), client.try_clone(), false),
                ]
                .into_iter()
                .filter_map(|(a, b, c)| Some((a.ok()?, b.ok()?, c)))
                {
                    let recorded = if from_client { &sent } else { &served }.clone();
                    let (hold, armed) = (hold2.clone(), armed.clone());
                    let drop_next = drop_next2.clone();
                    let (frozen, cut) = (frozen2.clone(), cut2.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        // The client's last bytes, across reads: a request's end may be split.
                        let mut tail: Vec<u8> = Vec::new();
                        while let Ok(n) = from.read(&mut buf) {
                            let held = hold.lock().unwrap().clone();
                            if from_client {
                                if n > 0 && drop_next.swap(false, Ordering::SeqCst) {
                                    let _ = from.shutdown(Shutdown::Both);
                                    let _ = to.shutdown(Shutdown::Both);
                                    break;
                                }
                                record(&recorded, &buf[..n]);
                                if let Some(h) = held {
                                    tail.extend_from_slice(&buf[..n]);
                                    let keep = h.request_end.len();
                                    tail.drain(..tail.len().saturating_sub(keep));
                                    if n > 0 && tail.ends_with(&h.request_end) {
                                        armed.store(true, Ordering::SeqCst);
                                    }
                                }
                            } else {
                                if let Some(hold) =
                                    held.filter(|_| armed.swap(false, Ordering::SeqCst))
                                {
                                    std::thread::sleep(hold.delay);
                                }
                                record(&recorded, &buf[..n]);
                            }
                            // What a hung service was sent stays unread if it dies (cut).
                            while frozen.load(Ordering::SeqCst) && !cut.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            if cut.load(Ordering::SeqCst) {
                                break;
                            }
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        TcpProxy {
            port,
            cut,
            down,
            frozen,
            hold,
            drop_next,
            streams,
            from_service,
            from_clients,
        }
    }

    /// What the clients have sent to the service so far (the first 64 KiB), as it went.
    pub fn client_bytes(&self) -> Vec<u8> {
        self.from_clients.lock().unwrap().clone()
    }

    /// `127.0.0.1:<port>`
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until the service has sent `bytes` (for instance the frame that ends a client's
    /// setup), or `timeout` passes; true if so.
    pub fn wait_for_service_bytes(&self, bytes: &[u8], timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self
                .from_service
                .lock()
                .unwrap()
                .windows(bytes.len())
                .any(|w| w == bytes)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Stops accepting and closes every proxied connection, as if the service had died.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ =
            TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(1));
        self.sever();
    }

    /// From now on, the service's reply to a client's bytes that end with `request_end` is held
    /// for `delay` (for instance an SMTP server's answer to the end of an email's data, to widen
    /// the moment between a server accepting something and its client learning it).
    pub fn hold_replies_to(&self, request_end: &[u8], delay: Duration) {
        *self.hold.lock().unwrap() = Some(Hold {
            request_end: request_end.to_vec(),
            delay,
        });
    }

    /// The next bytes a client sends are swallowed and their connection closed unanswered, as
    /// when a server closes a kept-alive connection just as its client sends on it.
    pub fn drop_next_request(&self) {
        self.drop_next.store(true, Ordering::SeqCst);
    }

    /// Closes every proxied connection and drops new ones until [`TcpProxy::come_up`].
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.sever();
    }

    /// Forwards new connections again after [`TcpProxy::go_down`].
    pub fn come_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// From now on nothing is forwarded either way, on open connections or new ones, until
    /// [`TcpProxy::thaw`]: what was sent meanwhile is held, then delivered.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Forwards again what [`TcpProxy::freeze`] held, and what follows.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Closes every proxied connection but keeps accepting new ones, as if the network had
    /// dropped them (or the service restarted).
    pub fn sever(&self) {
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
