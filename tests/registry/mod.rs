//! Helpers of tests/registry_test.rs: certificates, a real registry process, fake servers and
//! the test token issuer.

pub mod distribution;
pub mod issuer;
pub mod pki;
pub mod server;
