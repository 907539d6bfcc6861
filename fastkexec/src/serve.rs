//! `fastkexec serve`: the reboot histograms on `/metrics` over HTTP, for a Prometheus that
//! scrapes the machine directly instead of through node_exporter's textfile collector.
//!
//! A deliberately small HTTP/1.1 server on a current-thread tokio runtime: one request per
//! connection (`Connection: close`), GET and HEAD of `/metrics` only, 404 elsewhere. Each scrape
//! reads the state afresh (under its lock, off the runtime thread), so a `fastkexec report`
//! that folds a boot shows on the next scrape. Loopback only unless `allow_remote`: the reboot
//! history of a machine is not for everyone who can reach its port.

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::export::{self, Format};
use crate::histogram::State;
use crate::{Error, Result};

/// Where `fastkexec serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9731";
/// The path Prometheus scrapes by default.
pub const METRICS_PATH: &str = "/metrics";

/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 32;
/// Request line + headers; a scraper sends a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8192;
/// A client that has not sent its request (or taken the answer) by then is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of a failed scrape: no path, no errno.
const SCRAPE_FAILED: &str =
    "cannot read the reboot histograms; the reason is in the log of `fastkexec serve`\n";

/// What `Server::bind` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Listen on a non-loopback address too.
    pub allow_remote: bool,
    pub state_dir: PathBuf,
}

/// A bound, not yet running, metrics server.
#[derive(Debug)]
pub struct Server {
    listener: StdListener,
    addr: SocketAddr,
    state_dir: PathBuf,
}

impl Server {
    /// Binds the listening socket (so the caller can print the real port of `:0`). Refuses a
    /// non-loopback address without `allow_remote`.
    pub fn bind(opts: &ServeOptions) -> Result<Server> {
        let err = |problem: String| Error::Serve {
            addr: opts.listen.to_string(),
            problem,
        };
        if !opts.listen.ip().is_loopback() && !opts.allow_remote {
            return Err(err(
                "not a loopback address, and the metrics tell anyone who connects when and how \
                 this machine rebooted; listen on 127.0.0.1 (or ::1), or pass --allow-remote \
                 and firewall the port"
                    .into(),
            ));
        }
        let listener = StdListener::bind(opts.listen).map_err(|e| err(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
        Ok(Server {
            listener,
            addr,
            state_dir: opts.state_dir.clone(),
        })
    }

    /// The address actually bound (the port chosen for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<()> {
        self.run_until(std::future::pending())
    }

    /// Serves until `shutdown` completes; connections in flight are dropped then.
    pub fn run_until<F: Future<Output = ()>>(self, shutdown: F) -> Result<()> {
        let addr = self.addr;
        let err = move |problem: String| Error::Serve {
            addr: addr.to_string(),
            problem,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| err(format!("cannot start the async runtime: {e}")))?;
        let state_dir = Arc::new(self.state_dir);
        let std_listener = self.listener;
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).map_err(|e| err(e.to_string()))?;
            let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            tokio::pin!(shutdown);
            loop {
                let permit = tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    p = slots.clone().acquire_owned() => {
                        p.map_err(|e| err(format!("connection limit: {e}")))?
                    }
                };
                let (stream, peer) = tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors or similar: do not spin on it.
                            log::warn!("{addr}: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let dir = state_dir.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = handle(stream, &dir).await {
                        log::debug!("{peer}: {e}");
                    }
                });
            }
        })
    }
}

async fn handle(mut stream: TcpStream, state_dir: &Path) -> std::io::Result<()> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let response = match head {
        Head::Closed => return Ok(()),
        Head::Invalid => Response::status(400, "Bad Request"),
        Head::Complete(bytes) => match route(&bytes) {
            Route::Metrics { format, head_only } => {
                let dir = state_dir.to_path_buf();
                let rendered = tokio::task::spawn_blocking(move || {
                    State::open(&dir).and_then(|s| export::render(format, &s))
                })
                .await;
                let mut r = match rendered {
                    Ok(Ok(body)) => Response {
                        code: 200,
                        reason: "OK",
                        content_type: format.content_type(),
                        allow: None,
                        body: body.into_bytes(),
                        content_length_override: None,
                    },
                    // The detail (file names, errno) goes to the log, for the machine's
                    // owner; a scraper learns only that the read failed.
                    Ok(Err(e)) => {
                        log::warn!("/metrics: {e}");
                        Response::text(500, "Internal Server Error", SCRAPE_FAILED.into())
                    }
                    Err(e) => {
                        log::warn!("/metrics: {e}");
                        Response::text(500, "Internal Server Error", SCRAPE_FAILED.into())
                    }
                };
                if head_only {
                    r.head_only();
                }
                r
            }
            Route::MethodNotAllowed => {
                let mut r = Response::status(405, "Method Not Allowed");
                r.allow = Some("GET, HEAD");
                r
            }
            Route::NotFound => Response::status(404, "Not Found"),
            Route::BadRequest => Response::status(400, "Bad Request"),
        },
    };
    let bytes = response.into_bytes();
    if tokio::time::timeout(IO_TIMEOUT, stream.write_all(&bytes))
        .await
        .is_err()
    {
        return Ok(());
    }
    stream.shutdown().await
}

enum Head {
    /// Closed before sending anything.
    Closed,
    /// Too long, or closed half way.
    Invalid,
    Complete(Vec<u8>),
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        let Some(read) = chunk.get(..n) else {
            return Ok(Head::Invalid);
        };
        if read.is_empty() {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Invalid
            });
        }
        buf.extend_from_slice(read);
        if head_end(&buf).is_some() {
            return Ok(Head::Complete(buf));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(Head::Invalid);
        }
    }
}

/// Where the request head ends (a blank line; bare LF tolerated as RFC 9112 allows).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { format: Format, head_only: bool },
    MethodNotAllowed,
    NotFound,
    BadRequest,
}

/// Decides the answer from the request head alone.
fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let mut lines = text.lines();
    let Some(request_line) = lines.next() else {
        return Route::BadRequest;
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Route::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != METRICS_PATH {
        return Route::NotFound;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    // Prometheus asks for OpenMetrics first when it can parse it.
    let openmetrics = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .any(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        });
    Route::Metrics {
        format: if openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        },
        head_only,
    }
}

struct Response {
    code: u16,
    reason: &'static str,
    content_type: &'static str,
    allow: Option<&'static str>,
    body: Vec<u8>,
    /// HEAD: the length the GET body would have.
    content_length_override: Option<usize>,
}

impl Response {
    fn text(code: u16, reason: &'static str, body: String) -> Response {
        Response {
            code,
            reason,
            content_type: "text/plain; charset=utf-8",
            allow: None,
            body: body.into_bytes(),
            content_length_override: None,
        }
    }

    fn status(code: u16, reason: &'static str) -> Response {
        let body = if code == 404 {
            format!("{code} {reason}: the metrics are at {METRICS_PATH}\n")
        } else {
            format!("{code} {reason}\n")
        };
        Response::text(code, reason, body)
    }

    /// HEAD: the headers of the GET answer (Content-Length included), no body.
    fn head_only(&mut self) {
        self.content_length_override = Some(self.body.len());
        self.body.clear();
    }

    fn into_bytes(self) -> Vec<u8> {
        let len = self.content_length_override.unwrap_or(self.body.len());
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {len}\r\nConnection: close\r\n",
            self.code, self.reason, self.content_type
        );
        if let Some(allow) = self.allow {
            out.push_str(&format!("Allow: {allow}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{fold_boot, Boot, Phase};
    use std::io::{Read, Write};

    #[test]
    fn routes() {
        let m = |h: &str| route(h.as_bytes());
        assert_eq!(
            m("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics {
                format: Format::Prometheus,
                head_only: false
            }
        );
        assert_eq!(
            m("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics {
                format: Format::Prometheus,
                head_only: true
            }
        );
        assert_eq!(
            m("GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"),
            Route::Metrics {
                format: Format::OpenMetrics,
                head_only: false
            }
        );
        assert_eq!(m("POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(m("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(m("GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(m("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(m("GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(m("GET  /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /\xff HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(m(""), Route::BadRequest);
    }

    #[test]
    fn a_remote_address_needs_allow_remote() {
        let d = tempfile::tempdir().unwrap();
        let opts = ServeOptions {
            listen: "0.0.0.0:0".parse().unwrap(),
            allow_remote: false,
            state_dir: d.path().to_path_buf(),
        };
        let err = Server::bind(&opts).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        let opts = ServeOptions {
            allow_remote: true,
            ..opts
        };
        // Binding the wildcard is allowed then; nothing connects to it in this test.
        assert!(Server::bind(&opts).is_ok());
    }

    fn request(addr: SocketAddr, req: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    #[test]
    fn serves_fresh_metrics_on_each_scrape_and_404_elsewhere() {
        let d = tempfile::tempdir().unwrap();
        let server = Server::bind(&ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            allow_remote: false,
            state_dir: d.path().to_path_buf(),
        })
        .unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let t = std::thread::spawn(move || {
            server.run_until(async {
                let _ = stopped.await;
            })
        });
        let (head, body) = request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("fastkexec_reboots_total 0\n"), "{body}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));

        let boot = Boot {
            boot_id: "b1".into(),
            phases: vec![Phase::new("purgatory", 40_000)],
            total_ns: 1_000_000_000,
            reboot_unix_ns: 0,
            mode: "file".into(),
        };
        fold_boot(d.path(), &boot).unwrap();
        let (_, body) = request(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(body.contains("fastkexec_reboots_total 1\n"), "{body}");
        assert!(body.contains("fastkexec_phase_duration_seconds_count{phase=\"purgatory\"} 1\n"));

        let (head, body) = request(
            addr,
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
        );
        assert!(head.contains("application/openmetrics-text"), "{head}");
        assert!(body.ends_with("# EOF\n"));

        let (head, body) = request(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(body.is_empty());
        assert!(!head.contains("Content-Length: 0\r\n"), "{head}");

        let (head, _) = request(addr, "GET /other HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 404 Not Found"), "{head}");
        let (head, _) = request(addr, "DELETE /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
        let (head, _) = request(addr, "nonsense\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        // A request head that never ends is cut off at the limit.
        let long = format!(
            "GET /metrics HTTP/1.1\r\nX: {}",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(long.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");

        // A corrupt state is a 200 with the evidence counted, not a failed scrape.
        std::fs::write(d.path().join(crate::histogram::STATE_FILE), "junk").unwrap();
        let (head, body) = request(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.contains("fastkexec_state_corrupt_files 1\n"), "{body}");

        stop.send(()).unwrap();
        t.join().unwrap().unwrap();
    }

    /// A scrape that fails says so without telling the client where the state lives, and a
    /// corrupt state is served (and counted) without being moved.
    #[test]
    fn scrapes_never_move_files_or_show_paths() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join(crate::histogram::STATE_FILE);
        let server = Server::bind(&ServeOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            allow_remote: false,
            state_dir: d.path().to_path_buf(),
        })
        .unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let t = std::thread::spawn(move || {
            server.run_until(async {
                let _ = stopped.await;
            })
        });
        std::fs::write(&state, "junk").unwrap();
        let (head, body) = request(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body.contains("fastkexec_state_corrupt_files 1\n"), "{body}");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        assert_eq!(std::fs::read(&state).unwrap(), b"junk");

        // Unreadable (a directory where the file should be): a 500 that names no path.
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir(&state).unwrap();
        let (head, body) = request(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 500"), "{head}");
        let dir = d.path().to_string_lossy().into_owned();
        assert!(
            !body.contains(&dir) && !body.contains("state.json"),
            "{body}"
        );
        assert!(body.contains("log"), "{body}");

        stop.send(()).unwrap();
        t.join().unwrap().unwrap();
    }
}
