//! `fastkexec serve`'s request path, end to end: the input is what a client sends on one
//! connection (then it closes its side), answered by the real server (`serve::Server`, bound
//! once on 127.0.0.1:0 in this process, so its code is instrumented too) over a state
//! holding three folded boots. Whatever parses the request (the hand-written parser, or a
//! library in its place), the answer must be one well-formed HTTP/1.x response, never a
//! 500 (the state is fine: a request cannot make the scrape fail), and it must come.
//! Seeds: `fuzz/seeds/serve_http` (scrapes, HEAD, other methods and paths, broken heads).
#![no_main]

use fastkexec::metrics::histogram::{Boot, Phase, State};
use fastkexec::metrics::serve::{ServeOptions, Server};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fastkexec-fuzz-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("state directory");
        let mut state = State::new();
        for i in 0..3u64 {
            state
                .fold(&Boot {
                    boot_id: format!("boot-{i}"),
                    phases: vec![
                        Phase::new("device_shutdown", 11_000_000 + i),
                        Phase::new("relocation", 400_000 + i),
                        Phase::new("kernel_boot", 900_000_000 + i),
                    ],
                    total_ns: 1_000_000_000 + i,
                    reboot_unix_ns: 1_700_000_000_000_000_000 + i,
                    mode: "uncompressed".into(),
                    units: Vec::new(),
                })
                .expect("fold");
        }
        std::fs::write(dir.join("state.json"), state.to_json().expect("encode")).expect("write");
        let server = Server::bind(&ServeOptions {
            listen: "127.0.0.1:0".parse().expect("address"),
            allow_remote: false,
            state_dir: dir,
        })
        .expect("bind");
        let addr = server.local_addr();
        std::thread::spawn(move || server.run().expect("serve"));
        addr
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = TcpStream::connect(server()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server may answer (and close) before it has read everything: not our concern.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    if let Err(e) = s.read_to_end(&mut answer) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "no answer within 5 s to a request whose sender has closed its side"
        );
        // A reset after the answer (unread request bytes) is the kernel's doing.
    }
    if answer.is_empty() {
        return;
    }
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the answer has a complete head");
    let head = std::str::from_utf8(&answer[..head_end]).expect("the head is text");
    let status = head.lines().next().unwrap_or("");
    // An HTTP/1.0 request gets an HTTP/1.0 answer (RFC 9110 §6.2: a server answers with a
    // version it supports that the client's major version allows); both are well-formed.
    let code = status
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("bad status line {status:?}"));
    assert!((200..600).contains(&code), "status {code}");
    assert_ne!(code, 500, "a request made the scrape fail: {status}");
    let length = head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>())
    });
    if let Some(length) = length {
        let length = length.expect("Content-Length is a number");
        let body = answer.len() - head_end - 4;
        if !data.starts_with(b"HEAD ") {
            assert!(
                body >= length,
                "body of {body} bytes, Content-Length {length}"
            );
        }
    }
});
