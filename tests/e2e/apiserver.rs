//! A small HTTPS client for the kube-apiserver (admin bearer token, the control plane's CA), for
//! requests that must be cheaper and more frequent than a kubectl process each: polling a
//! decision every 20 ms, or driving load. One kept-alive HTTP/1.1 connection per client,
//! reconnected when the server closes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Where the apiserver is and how to authenticate.
#[derive(Clone)]
pub struct Endpoint {
    /// `host:port`
    pub authority: String,
    pub token: String,
    tls: TlsConnector,
    server_name: ServerName<'static>,
}

impl Endpoint {
    /// `url` is `https://HOST:PORT`; `ca_pem` the CA that signed the apiserver's certificate.
    pub fn new(url: &str, ca_pem: &[u8], token: &str) -> anyhow::Result<Endpoint> {
        let authority =
            url.strip_prefix("https://").context("an https:// URL")?.trim_end_matches('/').to_owned();
        let host = authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h).to_owned();
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(certificate.context("a PEM certificate")?).context("the CA certificate")?;
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Endpoint {
            authority,
            token: token.to_owned(),
            tls: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(host).context("the apiserver's host name")?,
        })
    }
}

/// One connection to the apiserver.
pub struct Client {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// What came back.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client { endpoint, sender: None }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(&self.endpoint.authority).await?;
            stream.set_nodelay(true)?;
            let tls = self.endpoint.tls.connect(self.endpoint.server_name.clone(), stream).await?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        self.sender.as_mut().context("connected")
    }

    /// One request; a JSON body when `body` is given.
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Reply> {
        self.request_as(method, path, "application/json", body).await
    }

    /// One request whose body has `content_type` (e.g. `application/apply-patch+yaml`).
    pub async fn request_as(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Reply> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.endpoint.authority.as_str())
            .header("authorization", format!("Bearer {}", self.endpoint.token))
            .header("accept", "application/json")
            .header("content-type", content_type)
            .header("user-agent", "registry-gate-e2e")
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))?;
        let sender = self.connect().await?;
        sender.ready().await?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body })
    }
}

/// What the apiserver decided about a Pod creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Admitted,
    /// Refused by an admission webhook, with the message.
    Refused(String),
}

impl Decision {
    pub fn is_admitted(&self) -> bool {
        *self == Decision::Admitted
    }
}

/// A blocking client for tests: its own single-threaded runtime and one connection.
pub struct Blocking {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Blocking {
    pub fn new(endpoint: Endpoint) -> anyhow::Result<Blocking> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Blocking { runtime, client: Client::new(endpoint) })
    }

    pub fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Reply> {
        self.request_as(method, path, "application/json", body)
    }

    pub fn request_as(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Reply> {
        let Blocking { runtime, client } = self;
        let call = client.request_as(method, path, content_type, body);
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(15), call).await })?
    }

    /// Server-side apply of `object` (what `kubectl apply --server-side --force-conflicts` sends).
    pub fn apply(&mut self, object: &serde_json::Value) -> anyhow::Result<()> {
        let metadata = &object["metadata"];
        let (Some(namespace), Some(name)) = (metadata["namespace"].as_str(), metadata["name"].as_str())
        else {
            bail!("apply needs a namespaced object with a name");
        };
        let resource = match object["kind"].as_str() {
            Some("ConfigMap") => "configmaps",
            other => bail!("apply does not know kind {other:?}"),
        };
        let path = format!(
            "/api/v1/namespaces/{namespace}/{resource}/{name}?fieldManager=registry-gate-e2e&force=true"
        );
        let reply = self.request_as(
            "PATCH",
            &path,
            "application/apply-patch+yaml",
            Some(&serde_json::to_vec(object)?),
        )?;
        if !(200..300).contains(&reply.status) {
            bail!("server-side apply of {resource}/{name} answered {}: {}", reply.status, reply.text());
        }
        Ok(())
    }

    /// `POST .../pods?dryRun=All` (what `kubectl create --dry-run=server` sends): admitted, or
    /// refused by an admission webhook. Anything else is an error.
    pub fn dry_run_pod(
        &mut self,
        namespace: &str,
        pod: &serde_json::Value,
    ) -> anyhow::Result<(Decision, Duration)> {
        let started = Instant::now();
        let path = format!("/api/v1/namespaces/{namespace}/pods?dryRun=All&fieldManager=registry-gate-e2e");
        let reply = self.request("POST", &path, Some(&serde_json::to_vec(pod)?))?;
        let elapsed = started.elapsed();
        let text = reply.text();
        match reply.status {
            200..=299 => Ok((Decision::Admitted, elapsed)),
            _ if text.contains("denied the request") => {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                Ok((Decision::Refused(message["message"].as_str().unwrap_or(&text).to_owned()), elapsed))
            }
            status => bail!("dry-run Pod creation answered {status}: {text}"),
        }
    }
}
