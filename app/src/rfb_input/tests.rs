//! The input channel against a scripted server on a socket pair, and against the real
//! helper on a PS/2 echo guest.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream as StdStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

/// A FramebufferUpdate header for `rects` rectangles.
fn update(rects: u16) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&rects.to_be_bytes());
    b
}

fn rect(width: u16, height: u16, encoding: i32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [0u16, 0, width, height] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&encoding.to_be_bytes());
    b
}

/// The server side of the handshake up to ServerInit (32 bpp, name "vm"), then the
/// client's SetEncodings and update request, which it checks.
fn serve_handshake(s: &mut StdStream) {
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    assert_eq!(&version, b"RFB 003.008\n");
    s.write_all(&[1, 1]).unwrap();
    let mut chosen = [0u8];
    s.read_exact(&mut chosen).unwrap();
    assert_eq!(chosen, [1]);
    s.write_all(&0u32.to_be_bytes()).unwrap();
    let mut shared = [0u8];
    s.read_exact(&mut shared).unwrap();
    assert_eq!(shared, [1], "the input channel shares the desktop");
    let mut init = vec![
        0, 64, 0, 48, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ];
    init.extend_from_slice(&2u32.to_be_bytes());
    init.extend_from_slice(b"vm");
    s.write_all(&init).unwrap();
    let mut hello = [0u8; 8 + 10];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(hello[..8], [2, 0, 0, 1, 0xff, 0xff, 0xfe, 0xfe]);
    assert_eq!(hello[8..], [3, 1, 0, 0, 0, 0, 0, 1, 0, 1]);
}

/// Runs `client` against `server` (a thread with the other end of a socket pair).
fn with_server<T>(
    server: impl FnOnce(StdStream) + Send + 'static,
    client: impl AsyncFnOnce(tokio::net::UnixStream) -> T,
) -> T {
    let (ours, theirs) = StdStream::pair().unwrap();
    let server = std::thread::spawn(move || server(theirs));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    ours.set_nonblocking(true).unwrap();
    let result = runtime.block_on(async move {
        let stream = tokio::net::UnixStream::from_std(ours).unwrap();
        client(stream).await
    });
    drop(runtime);
    server.join().unwrap();
    result
}

#[test]
fn messages_have_the_rfb_and_qemu_layouts() {
    assert_eq!(
        ext_key_event(0x7a, 0x15, true),
        [255, 0, 0, 1, 0, 0, 0, 0x7a, 0, 0, 0, 0x15]
    );
    assert_eq!(
        ext_key_event(0xff52, 0xc8, false),
        [255, 0, 0, 0, 0, 0, 0xff, 0x52, 0, 0, 0, 0xc8]
    );
    assert_eq!(key_event(0xffe3, true), [4, 1, 0, 0, 0, 0, 0xff, 0xe3]);
    assert_eq!(pointer_event(300, 2, 5), [5, 5, 1, 44, 0, 2]);
    assert_eq!(
        set_encodings(&[-258, -257]),
        [2, 0, 0, 2, 0xff, 0xff, 0xfe, 0xfe, 0xff, 0xff, 0xfe, 0xff]
    );
    assert_eq!(
        update_request(true, 1, 2, 640, 480),
        [3, 1, 0, 1, 0, 2, 2, 128, 1, 224]
    );
}

#[test]
fn only_rfb_3_8_and_later_is_spoken() {
    assert!(supports_rfb_3_8(b"RFB 003.008\n"));
    assert!(supports_rfb_3_8(b"RFB 004.001\n"));
    assert!(!supports_rfb_3_8(b"RFB 003.007\n"));
    assert!(!supports_rfb_3_8(b"RFB 003.00x\n"));
    assert!(!supports_rfb_3_8(b"HTTP/1.1 200"));
    assert!(!supports_rfb_3_8(&[0xff; 12]));
}

fn read_all(bytes: &[u8], bits_per_pixel: u8) -> Result<Vec<ServerMessage>, InputError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut read = bytes;
        let mut messages = Vec::new();
        while !read.is_empty() {
            messages.push(read_message(&mut read, bits_per_pixel).await?);
        }
        Ok(messages)
    })
}

#[test]
fn server_messages_are_skipped_whole_and_the_ack_is_seen() {
    let mut bytes = update(5);
    bytes.extend(rect(2, 1, 0));
    bytes.extend([1; 8]); // 2 pixels of 32 bits
    bytes.extend(rect(1, 1, 1));
    bytes.extend([0, 0, 0, 0]);
    bytes.extend(rect(0, 0, -258));
    bytes.extend(rect(9, 2, -239));
    bytes.extend([7; 9 * 2 * 4 + 2 * 2]); // pixels, then a 2-byte mask row each
    bytes.extend(rect(64, 48, -308));
    bytes.extend([1, 0, 0, 0]);
    bytes.extend([0; 16]);
    bytes.extend([2]); // Bell
    bytes.extend([3, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']); // ServerCutText
    bytes.extend([1, 0, 0, 0, 0, 1]); // SetColourMapEntries: one colour
    bytes.extend([0; 6]);
    bytes.extend(update(1));
    bytes.extend(rect(4, 4, 16));
    bytes.extend(3u32.to_be_bytes());
    bytes.extend([1, 2, 3]);
    let messages = read_all(&bytes, 32).unwrap();
    assert_eq!(
        messages,
        [
            ServerMessage { ext_key_ack: true },
            ServerMessage::default(),
            ServerMessage::default(),
            ServerMessage::default(),
            ServerMessage::default(),
        ]
    );
    // Raw pixels follow the server's pixel size.
    let mut bytes = update(1);
    bytes.extend(rect(3, 1, 0));
    bytes.extend([0; 6]);
    assert_eq!(read_all(&bytes, 16).unwrap(), [ServerMessage::default()]);
}

#[test]
fn malformed_server_data_is_an_error_not_a_panic() {
    assert!(matches!(
        read_all(&[77], 32),
        Err(InputError::UnknownMessage(77))
    ));
    let mut bytes = update(1);
    bytes.extend(rect(1, 1, 12345));
    assert!(matches!(
        read_all(&bytes, 32),
        Err(InputError::UnknownEncoding(12345))
    ));
    // Truncated anywhere: an end-of-file error.
    let mut bytes = update(2);
    bytes.extend(rect(100, 100, 0));
    bytes.extend([0; 64]);
    for len in 1..bytes.len() {
        match read_all(&bytes[..len], 32) {
            Err(InputError::Io(err)) => assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{len} bytes: {other:?}"),
        }
    }
    // A rectangle as large as the protocol allows is skipped, not allocated.
    let mut bytes = update(1);
    bytes.extend(rect(u16::MAX, u16::MAX, 0));
    assert!(matches!(read_all(&bytes, 32), Err(InputError::Io(_))));
}

#[test]
fn acknowledged_keys_go_as_scancodes_and_the_rest_as_keysyms() {
    let (tx, rx) = mpsc::channel();
    let acked = with_server(
        move |mut s| {
            serve_handshake(&mut s);
            let mut answer = update(2);
            answer.extend(rect(1, 1, 0));
            answer.extend([0; 4]);
            answer.extend(rect(0, 0, -258));
            s.write_all(&answer).unwrap();
            let mut got = [0u8; 12 + 8 + 6];
            s.read_exact(&mut got).unwrap();
            tx.send(got).unwrap();
        },
        async |stream| {
            let mut channel = InputChannel::start(stream).await.unwrap();
            channel.key(0x7a, Some(0x15), true).await.unwrap();
            channel.key(0xe9, None, true).await.unwrap();
            channel.pointer(10, 20, 1).await.unwrap();
            channel.scancodes().await
        },
    );
    assert!(acked);
    let got = rx.recv().unwrap();
    assert_eq!(got[..12], ext_key_event(0x7a, 0x15, true));
    assert_eq!(got[12..20], key_event(0xe9, true));
    assert_eq!(got[20..], pointer_event(10, 20, 1));
}

#[test]
fn without_an_ack_keys_go_as_keysyms() {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let acked = with_server(
        move |mut s| {
            serve_handshake(&mut s);
            s.write_all(&update(0)).unwrap();
            let mut got = [0u8; 8];
            s.read_exact(&mut got).unwrap();
            tx.send(got).unwrap();
        },
        async |stream| {
            let mut channel = InputChannel::start(stream).await.unwrap();
            channel.key(0x7a, Some(0x15), false).await.unwrap();
            channel.scancodes().await
        },
    );
    assert!(!acked);
    assert!(started.elapsed() >= ACK_WAIT);
    assert_eq!(rx.recv().unwrap(), key_event(0x7a, false));
}

#[test]
fn a_server_that_sends_garbage_ends_the_channel_with_why() {
    let err = with_server(
        |mut s| {
            serve_handshake(&mut s);
            s.write_all(&[42]).unwrap();
            // Keep the socket open until the client has read the byte.
            let _ = s.read(&mut [0u8; 1]);
        },
        async |stream| {
            let mut channel = InputChannel::start(stream).await.unwrap();
            channel.ended().await
        },
    );
    assert!(matches!(err, InputError::UnknownMessage(42)), "{err:?}");
}

#[test]
fn a_server_that_wants_a_password_is_refused_clearly() {
    let err = with_server(
        |mut s| {
            s.write_all(b"RFB 003.008\n").unwrap();
            let mut version = [0u8; 12];
            s.read_exact(&mut version).unwrap();
            s.write_all(&[1, 2]).unwrap();
            let _ = s.read(&mut [0u8; 1]);
        },
        async |stream| InputChannel::start(stream).await.err(),
    );
    assert!(matches!(err, Some(InputError::NoSecurityNone)), "{err:?}");
    let err = with_server(
        |mut s| {
            s.write_all(b"RFB 003.008\n").unwrap();
            let mut version = [0u8; 12];
            s.read_exact(&mut version).unwrap();
            s.write_all(&[0, 0, 0, 0, 4]).unwrap();
            s.write_all(b"full").unwrap();
            let _ = s.read(&mut [0u8; 1]);
        },
        async |stream| InputChannel::start(stream).await.err(),
    );
    assert!(
        matches!(&err, Some(InputError::Refused(reason)) if reason == "full"),
        "{err:?}"
    );
}

/// The helper on the PS/2 echo guest (`tests/guests/input.S`), its COM1 lines on a
/// channel; killed on drop.
struct Helper {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Helper {
    fn line_starting(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(err) => panic!("no line starting {prefix:?} from the guest: {err}"),
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_helper_gives_a_ps2_guest_the_scancode_not_the_keysym() {
    if hospes_tests::skip_without_kvm() {
        return;
    }
    let guest = hospes_tests::build_guest("input", hospes_tests::GuestKind::Pvh);
    let socket = guest.dir.path().join("vnc.sock");
    let mut child = Command::new(hospes_tests::vmm_binary())
        .arg("--kernel")
        .arg(&guest.path)
        .arg("--vnc")
        .arg(format!("unix:{}", socket.display()))
        .args(["-m", "64M", "--serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start hospes-vmm");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let helper = Helper { child, lines };
    helper.line_starting("input ready");
    helper.line_starting("aux fa");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut channel = InputChannel::connect(&socket).await.unwrap();
        assert!(channel.scancodes().await, "the helper acknowledges -258");
        // A German keyboard: the key labelled Z is where US has Y (scancode 0x15) and
        // gives keysym 'z'. The guest must get 0x15, not the US 'z' key's 0x2c.
        channel
            .key(u32::from(b'z'), Some(0x15), true)
            .await
            .unwrap();
        channel
            .key(u32::from(b'z'), Some(0x15), false)
            .await
            .unwrap();
        // An E0 key: Up.
        channel.key(0xff52, Some(0xc8), true).await.unwrap();
        channel.key(0xff52, Some(0xc8), false).await.unwrap();
        // No scancode: the keysym, through the helper's US map.
        channel.key(u32::from(b'a'), None, true).await.unwrap();
        channel.key(u32::from(b'a'), None, false).await.unwrap();
        // The pointer on the same connection, after the keys.
        channel.pointer(100, 100, 0).await.unwrap();
        channel.pointer(110, 95, 0).await.unwrap();
        // Hold the connection until the guest has echoed everything.
        let kbd: Vec<String> = (0..8).map(|_| helper.line_starting("kbd")).collect();
        assert_eq!(
            kbd,
            [
                "kbd 15", "kbd 95", "kbd e0", "kbd 48", "kbd e0", "kbd c8", "kbd 1e", "kbd 9e"
            ]
        );
        // First move: no motion yet; second: 10 right, 5 up (PS/2 y grows upwards).
        let aux: Vec<String> = (0..6).map(|_| helper.line_starting("aux")).collect();
        assert_eq!(
            aux,
            ["aux 08", "aux 00", "aux 00", "aux 08", "aux 0a", "aux 05"]
        );
    });
}
