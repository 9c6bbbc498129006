//! Shared plumbing for the end-to-end tests: finding the built binaries, building the tiny
//! guests in `tests/guests/` with the system toolchain, and running the helper on them.
