//! Test helpers shared by the unit tests: a progress recorder, pinned-file construction, and a
//! minimal HTTP/1.1 server on 127.0.0.1 so pulls are tested with no internet.
//!
//! Invariant: the server answers only the routes it was given (404 otherwise) and counts every
//! request, so tests can assert that a cached pull touched no network. Cost: one thread per
//! server, connections handled one at a time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::checksum::to_hex;
use crate::progress::PullProgress;
use crate::registry::PinnedFile;

/// Records every progress call as a line of text.
#[derive(Debug, Default)]
pub(crate) struct RecordingProgress {
    pub events: Mutex<Vec<String>>,
    pub advanced: AtomicUsize,
}

impl RecordingProgress {
    pub fn starts(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with("start"))
            .cloned()
            .collect()
    }
}

impl PullProgress for RecordingProgress {
    fn start(&self, total_bytes: Option<u64>, what: &str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("start {what} {total_bytes:?}"));
    }
    fn advance(&self, bytes: u64) {
        self.advanced.fetch_add(bytes as usize, Ordering::Relaxed);
    }
    fn finish(&self) {
        self.events.lock().unwrap().push("finish".to_owned());
    }
    fn note(&self, message: &str) {
        self.events.lock().unwrap().push(format!("note {message}"));
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// A `PinnedFile` for `bytes` (the strings are leaked: fine for a test process).
pub(crate) fn pinned(bytes: &[u8]) -> PinnedFile {
    PinnedFile {
        sha256: sha256_hex(bytes).leak(),
        size: bytes.len() as u64,
    }
}

/// Deterministic, poorly compressible bytes.
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// One canned answer.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Claimed Content-Length when it should differ from the body (to cut a transfer short).
    pub claimed_length: Option<usize>,
}

impl Route {
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type,
            body,
            claimed_length: None,
        }
    }
}

/// A loopback HTTP server; stops when dropped.
pub(crate) struct TestServer {
    pub base: String,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(routes: HashMap<String, Route>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        requests.fetch_add(1, Ordering::SeqCst);
                        serve(stream, &routes);
                    }
                }
            })
        };
        Self {
            base,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, routes: &HashMap<String, Route>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let not_found = Route {
        status: 404,
        content_type: "text/plain",
        body: b"not found".to_vec(),
        claimed_length: None,
    };
    let route = routes.get(path).unwrap_or(&not_found);
    let mut stream = reader.into_inner();
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        route.status,
        route.content_type,
        route.claimed_length.unwrap_or(route.body.len())
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&route.body);
}
