//! The session against a scripted RFB server on a unix socket: what it does when vnc-rs
//! gives up resizing on a connection.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use super::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn only_an_uncertain_or_unanswered_resize_needs_a_new_connection() {
    let layout = vnc::DesktopLayout {
        width: 80,
        height: 60,
        screens: Vec::new(),
    };
    assert_eq!(ResizeOutcome::of(&Ok(layout)), ResizeOutcome::Settled);
    for settled in [
        ResizeError::Denied(vnc::DesktopStatus::Prohibited),
        ResizeError::Busy,
        ResizeError::Unsupported,
        ResizeError::Disconnected,
    ] {
        assert_eq!(ResizeOutcome::of(&Err(settled)), ResizeOutcome::Settled);
    }
    for gave_up in [ResizeError::Uncertain, ResizeError::Timeout] {
        assert_eq!(
            ResizeOutcome::of(&Err(gave_up)),
            ResizeOutcome::ConnectionGaveUp
        );
    }
}

/// What the scripted server saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A connection (counting from 1) asked for a size.
    Resize(usize, u16, u16),
}

fn read_exact(s: &mut UnixStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// A FramebufferUpdate with one ExtendedDesktopSize rectangle of one screen.
fn layout_update(reason: u16, width: u16, height: u16) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 1];
    for v in [reason, 0, width, height] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&(-308i32).to_be_bytes());
    b.extend_from_slice(&[1, 0, 0, 0]);
    b.extend_from_slice(&0u32.to_be_bytes());
    for v in [0u16, 0, width, height] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend_from_slice(&0u32.to_be_bytes());
    b
}

/// One client of the scripted server: RFB 3.8, security None, an 80x60 desktop. It
/// announces the layout in answer to the first update request, acknowledges QEMU
/// extended keys, and answers SetDesktopSize with the size `answer` makes of the asked
/// one, telling the test.
fn serve(
    mut s: UnixStream,
    id: usize,
    answer: fn(u16, u16) -> (u16, u16),
    seen: std_mpsc::Sender<Seen>,
) -> Option<()> {
    s.write_all(b"RFB 003.008\n").ok()?;
    read_exact(&mut s, 12)?;
    s.write_all(&[1, 1]).ok()?;
    read_exact(&mut s, 1)?;
    s.write_all(&0u32.to_be_bytes()).ok()?;
    read_exact(&mut s, 1)?;
    let mut init = vec![
        0, 80, 0, 60, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ];
    init.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&init).ok()?;
    let mut announced = false;
    loop {
        let kind = read_exact(&mut s, 1)?[0];
        match kind {
            0 => drop(read_exact(&mut s, 19)?),
            2 => {
                let head = read_exact(&mut s, 3)?;
                let count = u16::from_be_bytes([head[1], head[2]]);
                let list = read_exact(&mut s, usize::from(count) * 4)?;
                if list.chunks_exact(4).any(|e| e == (-258i32).to_be_bytes()) {
                    let mut ack = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
                    ack.extend_from_slice(&(-258i32).to_be_bytes());
                    s.write_all(&ack).ok()?;
                }
            }
            3 => {
                read_exact(&mut s, 9)?;
                if !announced {
                    announced = true;
                    s.write_all(&layout_update(0, 80, 60)).ok()?;
                }
            }
            4 => drop(read_exact(&mut s, 7)?),
            5 => drop(read_exact(&mut s, 5)?),
            251 => {
                let head = read_exact(&mut s, 7)?;
                let (width, height) = (
                    u16::from_be_bytes([head[1], head[2]]),
                    u16::from_be_bytes([head[3], head[4]]),
                );
                read_exact(&mut s, usize::from(head[5]) * 16)?;
                seen.send(Seen::Resize(id, width, height)).ok()?;
                let (width, height) = answer(width, height);
                s.write_all(&layout_update(1, width, height)).ok()?;
            }
            255 => drop(read_exact(&mut s, 11)?),
            _ => return None,
        }
    }
}

#[test]
fn a_guest_that_picks_another_size_does_not_end_resizing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vnc.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (seen_tx, seen) = std_mpsc::channel();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { break };
            let seen = seen_tx.clone();
            // The first picture connection's guest is 40 pixels narrower than asked.
            let answer: fn(u16, u16) -> (u16, u16) = if i == 0 {
                |w, h| (w - 40, h)
            } else {
                |w, h| (w, h)
            };
            std::thread::spawn(move || serve(stream, i + 1, answer, seen));
        }
    });
    let (frames_tx, frames) = std_mpsc::channel();
    let session = start(socket, move |frame| frames_tx.send(frame).is_ok()).unwrap();
    let resolution = |want: (u32, u32)| loop {
        match frames.recv_timeout(WAIT).expect("a resolution") {
            FrameEvent::Resolution(w, h) if (w, h) == want => break,
            FrameEvent::Closed(reason) => panic!("the session ended: {reason:?}"),
            _ => {}
        }
    };
    resolution((80, 60));

    session.send(InputEvent::Resize {
        width: 160,
        height: 100,
    });
    assert_eq!(seen.recv_timeout(WAIT), Ok(Seen::Resize(1, 160, 100)));
    // The view is told the size the guest picked.
    resolution((120, 100));

    // vnc-rs refuses any further request on the first connection; the session asks on a
    // new one (connection 2 is the input channel).
    session.send(InputEvent::Resize {
        width: 200,
        height: 150,
    });
    assert_eq!(seen.recv_timeout(WAIT), Ok(Seen::Resize(3, 200, 150)));
    resolution((200, 150));
}
