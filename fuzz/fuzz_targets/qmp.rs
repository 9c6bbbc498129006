//! The QMP server's client side without the socket: arbitrary bytes as a client's stream,
//! cut into reads of input-chosen sizes, through the same framer, command parser and
//! dispatcher as a connection's reader thread (`ClientState`), against the fake VM. Must
//! never panic; every reply must be one JSON object with `return` or `error` on one
//! CRLF-terminated line; after the framer gives up the connection is over.
#![no_main]

use hospes_core::control::EventSender;
use hospes_core::control::fake::FakeVm;
use hospes_core::control::server::ClientState;
use libfuzzer_sys::fuzz_target;

const NEGOTIATE: &[u8] = br#"{"execute": "qmp_capabilities"}"#;

fuzz_target!(|data: &[u8]| {
    let Some((&head, stream)) = data.split_first() else {
        return;
    };
    let vm = FakeVm::new(EventSender::new());
    let mut client = ClientState::new();
    if head & 0x80 != 0 {
        // Most commands need negotiation first: start from a negotiated session half the time.
        let replies = client.feed(NEGOTIATE, &vm).unwrap();
        assert_eq!(replies.len(), 1);
        assert!(client.negotiated());
    }
    let chunk = usize::from(head & 0x7f) + 1;
    for part in stream.chunks(chunk) {
        let replies = match client.feed(part, &vm) {
            Ok(replies) => replies,
            Err(_) => return,
        };
        for reply in replies {
            let line = reply
                .strip_suffix(b"\r\n")
                .expect("reply not line-terminated");
            assert!(!line.contains(&b'\n'), "reply spans lines");
            let v: serde_json::Value = serde_json::from_slice(&reply).expect("reply is JSON");
            assert!(v.is_object(), "reply is not an object: {v}");
            assert!(
                v.get("return").is_some() || v.get("error").is_some(),
                "neither return nor error: {v}"
            );
        }
    }
});
