//! Host services a device talks to, each run and watched by the helper: `passt` for the
//! network card.

pub mod passt;
