//! TLS to etcd: a member that serves https with a certificate of a test CA and checks its
//! clients' certificates (`--client-cert-auth`). A client with the CA and a certificate of
//! its own connects and works; one without a client certificate, one that trusts another
//! CA, and one that trusts only the host's CAs (no `caFile`) are refused, each with a
//! message naming etcd. The certificates are made with `openssl` in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tend::engine::etcd::{ClusterStore, EtcdConfig, EtcdStore, TlsFiles};

use crate::etcd::{free_port, require_etcd, run_with_timeout};
use crate::{chain, eventually, timeouts};

/// Runs `openssl ARGS` in `dir`; panics, loudly, when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = run_with_timeout(Command::new("openssl").args(args).current_dir(dir), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("openssl does not run (the TLS test needs it): {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA `NAME-ca.pem` (key `NAME-ca.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    let (key, cert, subject) = (format!("{name}-ca.key"), format!("{name}-ca.pem"), format!("/CN={name} CA"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &subject,
        ],
    );
}

/// A certificate `NAME.pem` (key `NAME.key`) signed by CA `by`, for `san` (server) or a
/// client (`san` empty).
fn cert(dir: &Path, name: &str, by: &str, san: &str) {
    let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let ext = format!("{name}.ext");
    let usage = if san.is_empty() {
        "extendedKeyUsage=clientAuth\n".to_string()
    } else {
        format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    };
    std::fs::write(dir.join(&ext), usage).expect("write the extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{by}-ca.pem"),
            "-CAkey",
            &format!("{by}-ca.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// A one-member etcd serving https on 127.0.0.1 with `server.pem`, checking clients'
/// certificates against `test-ca.pem`; killed when dropped.
struct TlsEtcd {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_etcd(dir: &Path) -> TlsEtcd {
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.join("etcd.log");
    let file = std::fs::File::create(&log).expect("the etcd log");
    let child = Command::new("etcd")
        .args(["--name", "tls", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tls={peer_url}"), "--client-cert-auth"])
        .arg("--cert-file")
        .arg(dir.join("server.pem"))
        .arg("--key-file")
        .arg(dir.join("server.key"))
        .arg("--trusted-ca-file")
        .arg(dir.join("test-ca.pem"))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("etcd starts");
    TlsEtcd { child, url, log }
}

fn config(url: &str, dir: &Path, ca: Option<&str>, client: bool) -> EtcdConfig {
    let mut config = EtcdConfig::new([url.to_string()]);
    config.timeouts = timeouts();
    config.tls = Some(TlsFiles {
        ca_file: ca.map(|c| dir.join(c)),
        cert_file: client.then(|| dir.join("client.pem")),
        key_file: client.then(|| dir.join("client.key")),
    });
    config
}

/// Connects with `config` and writes a key: the error of whichever fails.
async fn try_put(config: &EtcdConfig) -> Result<(), String> {
    let store = EtcdStore::connect(config).await.map_err(|e| chain(&e))?;
    store.put("/t/tls", b"v", None).await.map(|_| ()).map_err(|e| chain(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_works_and_every_wrong_setting_is_refused_naming_etcd() {
    require_etcd();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    ca(dir, "test");
    ca(dir, "other");
    cert(dir, "server", "test", "IP:127.0.0.1");
    cert(dir, "client", "test", "");
    let etcd = start_etcd(dir);
    let good = config(&etcd.url, dir, Some("test-ca.pem"), true);
    let log = etcd.log.clone();
    let (_, took) =
        eventually("the TLS member to answer", Duration::from_secs(30), || async { try_put(&good).await.ok() }).await;
    eprintln!("measured: a TLS member answered {took:?} after its start");
    let store = EtcdStore::connect(&good).await.expect("connects");
    let (_, kv) = store.get("/t/tls").await.expect("get over TLS");
    assert_eq!(kv.map(|kv| kv.value), Some(b"v".to_vec()), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    // No client certificate: etcd refuses the handshake.
    let refused =
        try_put(&config(&etcd.url, dir, Some("test-ca.pem"), false)).await.expect_err("no client certificate");
    assert!(refused.starts_with("etcd "), "{refused}");
    // Another CA: tend refuses etcd's certificate.
    let refused = try_put(&config(&etcd.url, dir, Some("other-ca.pem"), true)).await.expect_err("another CA");
    assert!(refused.starts_with("etcd "), "{refused}");
    // No caFile: the host's trusted CAs, which do not include the test CA.
    let refused = try_put(&config(&etcd.url, dir, None, true)).await.expect_err("the host's CAs");
    assert!(refused.starts_with("etcd ") && !refused.contains("CA file"), "{refused}");
    eprintln!("refused as: {refused}");
}
