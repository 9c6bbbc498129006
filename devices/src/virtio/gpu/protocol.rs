//! virtio-gpu wire constants and the control header (virtio 1.2 section 5.7.6).

pub const VIRTIO_GPU_F_EDID: u32 = 1;
pub const EVENT_DISPLAY: u32 = 1;
pub const MAX_SCANOUTS: u32 = 16;

pub const CMD_GET_DISPLAY_INFO: u32 = 0x0100;
pub const CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
pub const CMD_RESOURCE_UNREF: u32 = 0x0102;
pub const CMD_SET_SCANOUT: u32 = 0x0103;
pub const CMD_RESOURCE_FLUSH: u32 = 0x0104;
pub const CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
pub const CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
pub const CMD_RESOURCE_DETACH_BACKING: u32 = 0x0107;
pub const CMD_GET_EDID: u32 = 0x010a;
pub const CMD_UPDATE_CURSOR: u32 = 0x0300;
pub const CMD_MOVE_CURSOR: u32 = 0x0301;

pub const RESP_OK_NODATA: u32 = 0x1100;
pub const RESP_OK_DISPLAY_INFO: u32 = 0x1101;
pub const RESP_OK_EDID: u32 = 0x1104;
pub const RESP_ERR_UNSPEC: u32 = 0x1200;
pub const RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
pub const RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
pub const RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
pub const RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

/// Pixel formats (memory byte order on a little-endian guest).
pub const FORMAT_B8G8R8A8: u32 = 1;
pub const FORMAT_B8G8R8X8: u32 = 2;
pub const FORMAT_R8G8B8A8: u32 = 67;
pub const FORMAT_R8G8B8X8: u32 = 134;

pub const FLAG_FENCE: u32 = 1;

/// `struct virtio_gpu_ctrl_hdr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrlHeader {
    pub kind: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
}

impl CtrlHeader {
    pub const SIZE: usize = 24;

    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        let u = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Some(Self {
            kind: u(0),
            flags: u(4),
            fence_id: u64::from(u(8)) | u64::from(u(12)) << 32,
            ctx_id: u(16),
            ring_idx: b[20],
        })
    }

    /// A response header of `kind`, fence fields zero.
    pub fn response(kind: u32) -> Vec<u8> {
        let mut v = vec![0u8; Self::SIZE];
        v[..4].copy_from_slice(&kind.to_le_bytes());
        v
    }

    /// Copies the request's fence (and context) into response `resp`: requests are
    /// finished when answered, so the fence is signalled at once.
    pub fn stamp(&self, resp: &mut [u8]) {
        if self.flags & FLAG_FENCE != 0 && resp.len() >= Self::SIZE {
            resp[4..8].copy_from_slice(&FLAG_FENCE.to_le_bytes());
            resp[8..16].copy_from_slice(&self.fence_id.to_le_bytes());
            resp[16..20].copy_from_slice(&self.ctx_id.to_le_bytes());
            resp[20] = self.ring_idx;
        }
    }
}
