//! virtio-gpu driven by the mock driver: requests are built in guest memory exactly as a
//! guest driver builds them, and the shared display is checked pixel by pixel.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::protocol::*;
use super::*;
use crate::virtio::pci::DEVICE_OFFSET;
use crate::virtio::testing::{DATA, MockDriver};

const REQ: u64 = DATA;
const RESP: u64 = DATA + 0x1_0000;
/// Guest pages backing resource 1.
const BACKING: u64 = DATA + 0x2_0000;

fn gpu() -> (MockDriver, Arc<Display>) {
    let display = Arc::new(Display::new());
    let d = MockDriver::started(Box::new(Gpu::new(display.clone(), (1024, 768))), 16);
    (d, display)
}

fn request(d: &mut MockDriver, kind: u32, body: &[u32], flags: u32) -> Vec<u8> {
    let mut req = CtrlHeader::response(kind);
    req[4..8].copy_from_slice(&flags.to_le_bytes());
    req[8..16].copy_from_slice(&77u64.to_le_bytes());
    for v in body {
        req.extend_from_slice(&v.to_le_bytes());
    }
    d.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
    let (_, used) = d.submit(&[(REQ, req.len() as u32, false), (RESP, 2048, true)]);
    let mut resp = vec![0u8; used as usize];
    d.mem.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
    resp
}

fn kind(resp: &[u8]) -> u32 {
    u32::from_le_bytes(resp[..4].try_into().unwrap())
}

fn word(resp: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(resp[at..at + 4].try_into().unwrap())
}

/// Creates resource 1 of `w` x `h` backed by guest memory at BACKING in two pieces.
fn resource(d: &mut MockDriver, w: u32, h: u32) {
    assert_eq!(
        kind(&request(
            d,
            CMD_RESOURCE_CREATE_2D,
            &[1, FORMAT_B8G8R8X8, w, h],
            0
        )),
        RESP_OK_NODATA
    );
    let bytes = w * h * 4;
    let half = bytes / 2;
    let (lo, hi) = (BACKING as u32, (BACKING >> 32) as u32);
    let second = BACKING + u64::from(half) + 0x1000;
    let body = [
        1,
        2,
        lo,
        hi,
        half,
        0,
        second as u32,
        (second >> 32) as u32,
        bytes - half,
        0,
    ];
    assert_eq!(
        kind(&request(d, CMD_RESOURCE_ATTACH_BACKING, &body, 0)),
        RESP_OK_NODATA
    );
}

/// Writes pixel (x, y) of a `w`-wide resource into its two-piece backing.
fn put_pixel(d: &MockDriver, w: u32, h: u32, x: u32, y: u32, px: u32) {
    let at = u64::from((y * w + x) * 4);
    let half = u64::from(w * h * 4 / 2);
    let addr = if at < half {
        BACKING + at
    } else {
        BACKING + half + 0x1000 + (at - half)
    };
    d.mem.write_obj(px, GuestAddress(addr)).unwrap();
}

#[test]
fn display_info_and_edid_announce_the_preferred_mode() {
    let (mut d, _) = gpu();
    let r = request(&mut d, CMD_GET_DISPLAY_INFO, &[], 0);
    assert_eq!(kind(&r), RESP_OK_DISPLAY_INFO);
    assert_eq!(
        (word(&r, 24 + 8), word(&r, 24 + 12), word(&r, 24 + 16)),
        (1024, 768, 1)
    );
    assert_eq!(word(&r, 48 + 16), 0);
    let e = request(&mut d, CMD_GET_EDID, &[0, 0], 0);
    assert_eq!(kind(&e), RESP_OK_EDID);
    assert_eq!(word(&e, 24), 128);
    assert_eq!(&e[32..40], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    assert_eq!(
        kind(&request(&mut d, CMD_GET_EDID, &[3, 0], 0)),
        RESP_ERR_INVALID_SCANOUT_ID
    );
}

#[test]
fn transfer_scanout_and_flush_show_the_picture_with_damage() {
    let (mut d, display) = gpu();
    let (w, h) = (64, 32);
    resource(&mut d, w, h);
    put_pixel(&d, w, h, 3, 2, 0x00ff_0000);
    put_pixel(&d, w, h, 60, 30, 0x0000_ff00);
    let r = request(
        &mut d,
        CMD_TRANSFER_TO_HOST_2D,
        &[0, 0, w, h, 0, 0, 1, 0],
        FLAG_FENCE,
    );
    assert_eq!(kind(&r), RESP_OK_NODATA);
    // The fence comes back.
    assert_eq!((word(&r, 4), word(&r, 8)), (FLAG_FENCE, 77));
    assert_eq!(
        kind(&request(&mut d, CMD_SET_SCANOUT, &[0, 0, w, h, 0, 1], 0)),
        RESP_OK_NODATA
    );
    let s = display.surface().unwrap();
    assert_eq!((s.width, s.height), (64, 32));
    assert_eq!(s.pixel(3, 2), 0xff_0000);
    assert_eq!(s.pixel(60, 30), 0x00_ff00);
    let seq = display.damage_since(0).seq;
    // A partial transfer of one changed pixel, then a flush of it.
    put_pixel(&d, w, h, 10, 20, 0x0000_00ff);
    let off = (20 * w + 10) * 4;
    assert_eq!(
        kind(&request(
            &mut d,
            CMD_TRANSFER_TO_HOST_2D,
            &[10, 20, 1, 1, off, 0, 1, 0],
            0
        )),
        RESP_OK_NODATA
    );
    assert_eq!(
        kind(&request(
            &mut d,
            CMD_RESOURCE_FLUSH,
            &[10, 20, 1, 1, 1, 0],
            0
        )),
        RESP_OK_NODATA
    );
    assert_eq!(display.surface().unwrap().pixel(10, 20), 0x00_00ff);
    assert_eq!(
        display.damage_since(seq).rects,
        vec![Rect::new(10, 20, 1, 1)]
    );
}

#[test]
fn bad_requests_get_error_responses_and_the_device_goes_on() {
    let (mut d, display) = gpu();
    assert_eq!(
        kind(&request(&mut d, CMD_SET_SCANOUT, &[0, 0, 8, 8, 0, 9], 0)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        kind(&request(&mut d, CMD_RESOURCE_CREATE_2D, &[0, 2, 8, 8], 0)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    assert_eq!(
        kind(&request(&mut d, CMD_RESOURCE_CREATE_2D, &[5, 999, 8, 8], 0)),
        RESP_ERR_INVALID_PARAMETER
    );
    assert_eq!(
        kind(&request(
            &mut d,
            CMD_RESOURCE_CREATE_2D,
            &[5, 2, 16384, 16384],
            0
        )),
        RESP_ERR_OUT_OF_MEMORY
    );
    resource(&mut d, 8, 8);
    // A rectangle outside the resource, a transfer from backing past guest memory.
    assert_eq!(
        kind(&request(&mut d, CMD_SET_SCANOUT, &[4, 4, 8, 8, 0, 1], 0)),
        RESP_ERR_INVALID_PARAMETER
    );
    let far = [1u32, 1, 0, 0x100, 4096, 0];
    assert_eq!(
        kind(&request(&mut d, CMD_RESOURCE_ATTACH_BACKING, &far, 0)),
        RESP_OK_NODATA
    );
    assert_eq!(
        kind(&request(
            &mut d,
            CMD_TRANSFER_TO_HOST_2D,
            &[0, 0, 8, 8, 0, 0, 1, 0],
            0
        )),
        RESP_ERR_INVALID_PARAMETER
    );
    // A request too short for its own header, and an unknown command.
    d.mem.write_slice(&[1, 2, 3], GuestAddress(REQ)).unwrap();
    let (_, used) = d.submit(&[(REQ, 3, false), (RESP, 64, true)]);
    assert_eq!(used, 24);
    assert_eq!(kind(&request(&mut d, 0x0999, &[], 0)), RESP_ERR_UNSPEC);
    assert!(display.surface().is_none());
    assert_eq!(
        kind(&request(&mut d, CMD_GET_DISPLAY_INFO, &[], 0)),
        RESP_OK_DISPLAY_INFO
    );
}

#[test]
fn cursor_resource_becomes_the_display_cursor() {
    let (mut d, display) = gpu();
    let (w, h) = (64, 64);
    resource(&mut d, w, h);
    put_pixel(&d, w, h, 1, 1, 0xff12_3456);
    assert_eq!(
        kind(&request(
            &mut d,
            CMD_TRANSFER_TO_HOST_2D,
            &[0, 0, w, h, 0, 0, 1, 0],
            0
        )),
        RESP_OK_NODATA
    );
    assert_eq!(
        kind(&request(
            &mut d,
            CMD_UPDATE_CURSOR,
            &[0, 5, 5, 0, 1, 2, 3, 0],
            0
        )),
        RESP_OK_NODATA
    );
    let c = display.cursor().unwrap();
    assert_eq!((c.width, c.height, c.hot_x, c.hot_y), (64, 64, 2, 3));
    assert_eq!(c.pixels[65], 0xff12_3456);
    assert_eq!(c.pixels[0], 0);
}

#[test]
fn a_resize_request_raises_the_display_event_and_changes_the_mode() {
    let (mut d, display) = gpu();
    assert!(display.request_resize(1920, 1080));
    assert_eq!(d.read32(DEVICE_OFFSET) & EVENT_DISPLAY, EVENT_DISPLAY);
    let r = request(&mut d, CMD_GET_DISPLAY_INFO, &[], 0);
    assert_eq!((word(&r, 32), word(&r, 36)), (1920, 1080));
    d.write(DEVICE_OFFSET + 4, &EVENT_DISPLAY.to_le_bytes());
    assert_eq!(d.read32(DEVICE_OFFSET), 0);
    assert_eq!(d.read32(DEVICE_OFFSET + 8), 1);
}
