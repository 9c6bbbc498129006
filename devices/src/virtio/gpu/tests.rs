//! virtio-gpu driven by the mock driver: requests are built in guest memory exactly as a
//! guest driver builds them, and the shared display is checked pixel by pixel.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::protocol::*;
use super::*;
use crate::state::{StateError, decode, encode};
use crate::virtio::QueuePosition;
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

/// The GPU behind the transport while the test keeps a handle on it, to pause, save and
/// restore it as the transport does.
struct Held(Arc<Mutex<Gpu>>);

impl VirtioDevice for Held {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }
    fn pci_class(&self) -> (u8, u8, u8) {
        self.0.lock().unwrap().pci_class()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        self.0.lock().unwrap().features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.0.lock().unwrap().read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().write_config(offset, data)
    }
    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        self.0.lock().unwrap().activate(activation)
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().reset()
    }
}

fn held_gpu() -> (Arc<Mutex<Gpu>>, Arc<Display>) {
    let display = Arc::new(Display::new());
    let gpu = Arc::new(Mutex::new(Gpu::new(display.clone(), (1024, 768))));
    (gpu, display)
}

fn picture(display: &Display) -> (u32, u32, Vec<u8>) {
    let s = display.surface().expect("a surface");
    let mut px = Vec::new();
    s.read_rect(s.full(), &mut px);
    (s.width, s.height, px)
}

/// A 64x64 resource 1 with two pixels, shown from (8, 4) on and used as the cursor too;
/// a pending display event for 1920x1080. Six control requests.
fn busy_gpu(d: &mut MockDriver, display: &Display) {
    let (w, h) = (64, 64);
    resource(d, w, h);
    put_pixel(d, w, h, 9, 5, 0x00ff_0000);
    put_pixel(d, w, h, 60, 60, 0x0000_ff00);
    for (cmd, body) in [
        (CMD_TRANSFER_TO_HOST_2D, &[0, 0, w, h, 0, 0, 1, 0][..]),
        (CMD_SET_SCANOUT, &[8, 4, 56, 60, 0, 1]),
        (CMD_RESOURCE_FLUSH, &[0, 0, w, h, 1, 0]),
        (CMD_UPDATE_CURSOR, &[0, 5, 5, 0, 1, 2, 3, 0]),
    ] {
        assert_eq!(kind(&request(d, cmd, body, 0)), RESP_OK_NODATA, "{cmd:#x}");
    }
    assert!(display.request_resize(1920, 1080));
}

#[test]
fn pausing_stops_the_worker_and_reports_where_the_queue_stands() {
    let (gpu, display) = held_gpu();
    let mut d = MockDriver::started(Box::new(Held(gpu.clone())), 16);
    busy_gpu(&mut d, &display);
    let positions = gpu.lock().unwrap().pause().unwrap();
    assert_eq!(
        positions,
        vec![QueuePosition {
            index: 0,
            next_avail: 6,
            next_used: 6
        }]
    );
    // Paused: a request the driver makes now is not served.
    let hdr = CtrlHeader::response(CMD_GET_DISPLAY_INFO);
    d.mem.write_slice(&hdr, GuestAddress(REQ)).unwrap();
    d.add_chain(&[(REQ, 24, false), (RESP, 512, true)]);
    d.kick_if_needed(0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(d.get::<u16>(crate::virtio::testing::USED + 2), 6);
}

#[test]
fn a_restored_gpu_shows_the_same_picture_and_knows_its_resources() {
    let display = Arc::new(Display::new());
    let mut d = MockDriver::started(Box::new(Gpu::new(display.clone(), (1024, 768))), 16);
    busy_gpu(&mut d, &display);
    let before = picture(&display);
    assert_eq!(display.surface().unwrap().pixel(1, 1), 0xff_0000);
    let cursor = display.cursor().unwrap();

    // Save through the transport (it pauses the GPU), restore into a fresh one on its
    // own display, as a new helper process would.
    let display2 = Arc::new(Display::new());
    d.save_and_restore(Box::new(Gpu::new(display2.clone(), (1024, 768))))
        .unwrap();
    // Shown before the guest runs, all of it damaged.
    assert_eq!(picture(&display2), before);
    assert_eq!(display2.cursor().unwrap(), cursor);
    let s = display2.surface().unwrap();
    assert_eq!(display2.damage_since(0).rects, vec![s.full()]);

    // The pending event and the preferred mode came back.
    assert_eq!(d.read32(DEVICE_OFFSET) & EVENT_DISPLAY, EVENT_DISPLAY);
    let r = request(&mut d, CMD_GET_DISPLAY_INFO, &[], 0);
    assert_eq!((word(&r, 32), word(&r, 36)), (1920, 1080));
    // Resource 1 is still known: its id is taken, a flush works, and a transfer from its
    // backing in guest RAM reaches the screen.
    assert_eq!(
        kind(&request(&mut d, CMD_RESOURCE_CREATE_2D, &[1, 2, 8, 8], 0)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    let seq = display2.damage_since(0).seq;
    assert_eq!(
        kind(&request(
            &mut d,
            CMD_RESOURCE_FLUSH,
            &[0, 0, 64, 64, 1, 0],
            0
        )),
        RESP_OK_NODATA
    );
    assert_eq!(picture(&display2), before);
    assert_eq!(display2.damage_since(seq).rects, vec![s.full()]);
    put_pixel(&d, 64, 64, 20, 30, 0x0000_00ff);
    let off = (30 * 64 + 20) * 4;
    for (cmd, body) in [
        (CMD_TRANSFER_TO_HOST_2D, &[20, 30, 1, 1, off, 0, 1, 0][..]),
        (CMD_RESOURCE_FLUSH, &[20, 30, 1, 1, 1, 0]),
    ] {
        assert_eq!(kind(&request(&mut d, cmd, body, 0)), RESP_OK_NODATA);
    }
    let s = display2.surface().unwrap();
    assert_eq!((s.pixel(12, 26), s.pixel(1, 1)), (0x00_00ff, 0xff_0000));
    // Unref frees it: the scanout goes, the id is free again.
    assert_eq!(
        kind(&request(&mut d, CMD_RESOURCE_UNREF, &[1, 0], 0)),
        RESP_OK_NODATA
    );
    assert!(display2.surface().is_none());
    assert_eq!(
        kind(&request(&mut d, CMD_RESOURCE_CREATE_2D, &[1, 2, 8, 8], 0)),
        RESP_OK_NODATA
    );
}

#[test]
fn an_idle_gpu_saves_and_a_running_one_must_pause_first() {
    let (gpu, display) = held_gpu();
    assert_eq!(gpu.lock().unwrap().pause().unwrap(), vec![]);
    let idle = gpu.lock().unwrap().save_device_state().unwrap();
    let (fresh, display2) = held_gpu();
    fresh.lock().unwrap().restore_device_state(&idle).unwrap();
    assert!(display2.surface().is_none());

    let mut d = MockDriver::started(Box::new(Held(gpu.clone())), 16);
    busy_gpu(&mut d, &display);
    let err = gpu.lock().unwrap().save_device_state().unwrap_err();
    assert!(matches!(err, StateError::Device { .. }), "{err}");
}

#[test]
fn truncated_or_inconsistent_gpu_state_is_refused_and_the_gpu_goes_on() {
    let (gpu, display) = held_gpu();
    let mut d = MockDriver::started(Box::new(Held(gpu.clone())), 16);
    busy_gpu(&mut d, &display);
    gpu.lock().unwrap().pause().unwrap();
    let saved = gpu.lock().unwrap().save_device_state().unwrap();
    let good: state::GpuSavedForTests = decode(state::NAME, &saved).unwrap();
    let mut variants = Vec::new();
    let mut v = good.clone();
    v.scanout = Some((9, [0, 0, 8, 8]));
    variants.push(v);
    let mut v = good.clone();
    v.scanout = Some((1, [60, 60, 8, 8]));
    variants.push(v);
    let mut v = good.clone();
    v.resources.push(v.resources[0].clone());
    variants.push(v);
    let mut v = good.clone();
    v.resources[0].format = 999;
    variants.push(v);
    let mut v = good.clone();
    v.resources[0].pixels[0].index = 1 << 20;
    variants.push(v);
    let mut v = good.clone();
    v.resources[0].width = 16384;
    v.resources[0].height = 16384;
    variants.push(v);
    let mut v = good.clone();
    if let Some(c) = v.cursor.as_mut() {
        c.pixels.pop();
    }
    variants.push(v);
    let mut bad: Vec<Vec<u8>> = variants
        .iter()
        .map(|v| encode(state::NAME, v).unwrap())
        .collect();
    bad.push(saved[..saved.len() - 1].to_vec());
    bad.push(vec![0xff; 64]);
    bad.push(Vec::new());

    let (gpu2, display2) = held_gpu();
    for b in &bad {
        let err = gpu2.lock().unwrap().restore_device_state(b).unwrap_err();
        assert!(matches!(err, StateError::Mismatch { .. }), "{err}");
    }
    assert!(display2.surface().is_none() && display2.cursor().is_none());
    // Nothing was left behind: the device starts empty and serves requests.
    let mut d2 = MockDriver::started(Box::new(Held(gpu2.clone())), 16);
    assert_eq!(
        kind(&request(&mut d2, CMD_SET_SCANOUT, &[0, 0, 8, 8, 0, 1], 0)),
        RESP_ERR_INVALID_RESOURCE_ID
    );
    let r = request(&mut d2, CMD_GET_DISPLAY_INFO, &[], 0);
    assert_eq!((word(&r, 32), word(&r, 36)), (1024, 768));
}
