//! The vigil node: the IO shell around `vigil_protocol::Core`.
pub mod tls;
