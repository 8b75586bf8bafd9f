//! haul-core: the pure decision-making core of haul.
#![forbid(unsafe_code)]

pub mod http;
