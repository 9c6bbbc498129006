//! Mock virtio driver for unit tests.
