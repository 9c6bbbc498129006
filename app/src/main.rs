//! `hospes`: the Hospes desktop app.

fn main() {}
