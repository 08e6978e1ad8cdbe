//! App access in end-to-end tests: a small HTTP app (Python's http.server, echoing the
//! headers it received and speaking WebSocket), `devtrust app start` as a child process, and
//! curl.

use std::process::{Child, Command};

use super::{Home, Server};

/// The app: `python3 echo.py PORT [CERT KEY]` serves on 127.0.0.1:PORT (HTTPS with a
/// certificate and key).
pub const ECHO_APP: &str = r#"
import base64, hashlib, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def websocket(self):
        # RFC 6455 handshake, then echo every frame back unmasked (small text frames only).
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            n = head[1] & 0x7F
            mask = self.rfile.read(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            self.wfile.write(bytes([0x81, len(data)]) + data)
            self.wfile.flush()
    def log_message(self, *a):
        pass
# With TLS, on every loopback address (a test reaches it at one its certificate does not name).
srv = ThreadingHTTPServer(("0.0.0.0" if len(sys.argv) > 3 else "127.0.0.1", int(sys.argv[1])), H)
if len(sys.argv) > 3:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// curl: (status, body).
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The auth service's JWKS, fetched as an app would (its TLS checked with the host CA of the
/// profile at `home`).
pub fn jwks(srv: &Server, home: &Home) -> Vec<dt_ca::jwt::Jwk> {
    let store = dt_client::ProfileStore {
        home: home.path.clone(),
    };
    let host_ca = store.files(&store.current().unwrap().proxy).host_ca();
    let (code, body) = curl(&[
        "--cacert",
        host_ca.to_str().unwrap(),
        &format!("https://{}/.well-known/jwks.json", srv.addr),
    ]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["keys"].clone(),
    )
    .unwrap()
}

/// The claims of the identity header the echo app received (`echo` is its JSON answer),
/// verified with `keys` as an app would.
pub fn verified_claims(keys: &[dt_ca::jwt::Jwk], echo: &serde_json::Value) -> serde_json::Value {
    let token = echo["headers"]["devtrust-jwt-assertion"]
        .as_str()
        .unwrap_or_else(|| panic!("no identity header in {echo}"));
    serde_json::from_slice(&dt_ca::jwt::verify(token, keys).unwrap()).unwrap()
}
