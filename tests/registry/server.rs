//! Small HTTP(S) servers on loopback: the fakes that give the answers a real registry will not
//! (each test names its fake as one), and the base of the test token issuer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a fake answers to each request.
pub type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// A server answering with a [`Handler`], until dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeServer {
    /// Listens on a free loopback port, over TLS when `tls` is given. `make` receives the
    /// address, for answers that point back at the server (a token realm).
    pub async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        make: impl FnOnce(SocketAddr) -> Handler,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let handler = make(addr);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (handler, tls) = (handler.clone(), tls.clone());
                // The handshake runs in the connection's task, never in the accept loop.
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let response = handler(&request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    match tls {
                        Some(config) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                                return;
                            };
                            let _ =
                                http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        FakeServer { addr, accept }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// An answer with a status, headers and a body.
pub fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = StatusCode::from_u16(status).expect("a status code");
    for (name, value) in headers {
        response.headers_mut().append(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            hyper::header::HeaderValue::from_str(value).expect("a header value"),
        );
    }
    response
}

/// The `Authorization` header of a request, if any.
pub fn authorization(request: &Request<Incoming>) -> Option<&str> {
    request.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}
