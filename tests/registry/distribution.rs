//! Debian's `docker-registry` (distribution 2.8): one process per test, on a free loopback
//! port, with a configuration assembled from the templates beside this file, killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::ServerCert;

const BINARY: &str = "docker-registry";
/// A registry listens within about 60 ms here; this is for a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const BASE: &str = include_str!("registry-base.yml");
const TLS: &str = include_str!("registry-tls.yml");
const HTPASSWD: &str = include_str!("registry-htpasswd.yml");
const TOKEN: &str = include_str!("registry-token.yml");

/// How the registry authenticates.
pub enum Auth<'a> {
    /// Anyone may pull.
    Anonymous,
    /// Basic, from an htpasswd file with these users and passwords.
    Htpasswd(&'a [(&'a str, &'a str)]),
    /// Bearer, with tokens from a token issuer at `realm` signed by `signing_cert_pem`.
    Token { realm: &'a str, service: &'a str, issuer: &'a str, signing_cert_pem: &'a str },
}

/// A running registry.
pub struct TestRegistry {
    child: Child,
    pub addr: SocketAddr,
    /// Holds the configuration, certificates, storage and log until the registry stops.
    _dir: tempfile::TempDir,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestRegistry {
    /// Starts a registry, over TLS when `tls` is given, and waits until it listens.
    pub async fn start(tls: Option<&ServerCert>, auth: Auth<'_>) -> TestRegistry {
        let binary = which(BINARY).unwrap_or_else(|| {
            panic!("{BINARY} is not installed: `make registry` installs it (apt-get install docker-registry)")
        });
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path().to_str().expect("a UTF-8 path").to_owned();
        let addr = free_port();
        let mut config = BASE.to_owned();
        if let Some(cert) = tls {
            std::fs::write(dir.path().join("server.crt"), &cert.cert_pem).expect("written");
            std::fs::write(dir.path().join("server.key"), &cert.key_pem).expect("written");
            config += TLS;
        }
        let mut values = vec![("${ROOT}", root), ("${ADDR}", addr.to_string())];
        match auth {
            Auth::Anonymous => {}
            Auth::Htpasswd(users) => {
                let lines: String = users
                    .iter()
                    .map(|(user, password)| {
                        let hash = bcrypt::hash_with_result(password, 4).expect("bcrypt");
                        format!("{user}:{}\n", hash.format_for_version(bcrypt::Version::TwoY))
                    })
                    .collect();
                std::fs::write(dir.path().join("htpasswd"), lines).expect("written");
                config += HTPASSWD;
            }
            Auth::Token { realm, service, issuer, signing_cert_pem } => {
                std::fs::write(dir.path().join("issuer.crt"), signing_cert_pem).expect("written");
                values.extend([
                    ("${REALM}", realm.to_owned()),
                    ("${SERVICE}", service.to_owned()),
                    ("${ISSUER}", issuer.to_owned()),
                ]);
                config += TOKEN;
            }
        }
        for (name, value) in values {
            config = config.replace(name, &value);
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("written");
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("a log file");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle"))
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let mut registry = TestRegistry { child, addr, _dir: dir };
        registry.wait_until_listening(&log_path).await;
        registry
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    async fn wait_until_listening(&mut self, log: &std::path::Path) {
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let output = std::fs::read_to_string(log).unwrap_or_default();
                panic!("docker-registry exited ({status}) before listening:\n{output}");
            }
            if started.elapsed() > START_TIMEOUT {
                let output = std::fs::read_to_string(log).unwrap_or_default();
                panic!("docker-registry did not listen on {} within {START_TIMEOUT:?}:\n{output}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A loopback address nobody listens on right now: bound to port 0, then released.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("bound")
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}
