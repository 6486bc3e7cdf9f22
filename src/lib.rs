//! registry-gate admits Pods only when every image comes from a registry the organization has
//! registered, and gives them the pull secrets those registries need.
//!
//! How a request flows through the modules:
//!
//! - [`image`]: each image string is parsed exactly as the kubelet and containerd parse it
//!   (borrowed, no allocation), so that what is checked is what will be pulled.
//! - [`policy`]: the registry list admins write, validated field by field and compiled into a
//!   matcher that decides one image in tens of nanoseconds at any policy size.
//! - [`admission`]: where images sit in Pods and in Pod-template workloads.
//! - [`namespaces`]: namespace labels from a read-only watch, for registries scoped by labels.
//! - [`server`]: HTTPS with certificate reload, the `/validate` and `/mutate` endpoints, and the
//!   operations port (`/metrics`, `/healthz`, `/readyz`); [`metrics`] holds what it exports.
//! - [`controller`]: the second process (`registry-gate controller`), off the admission path:
//!   it copies each registry's pull Secret into the namespaces that may use the registry, keeps
//!   the copies current, and never touches a Secret it did not create.
//! - [`credentials`]: what a registry's source pull Secret must hold, checked before it is copied.
//! - [`certs`]: development certificates for `serve` and for tests.
//! - [`check`]: the same decision offline, for CI pipelines (`registry-gate check`).
//! - [`verify`]: policy tests, expected verdicts and pull secrets kept in CI (`registry-gate test`).
//! - [`registry_test`]: the Docker Registry v2 handshake behind `registry-gate registry test`, stage
//!   by stage (DNS, TCP, TLS, /v2/, challenge, token, credentials, permission).
//! - [`watch`]: how every watch on the API server retries when it is away.
//! - [`yaml`]: YAML trees that remember lines, so policy errors can point at them.

pub mod admission;
pub mod certs;
pub mod check;
pub mod controller;
pub mod credentials;
pub mod image;
pub mod metrics;
pub mod namespaces;
pub mod policy;
pub mod registry_test;
pub mod server;
pub mod verify;
pub mod watch;
pub mod yaml;
