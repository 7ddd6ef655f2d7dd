//! etcd's authentication, with the user name and password read from files: a right
//! password connects and works, a wrong one is refused at connect, naming etcd.

use tend::engine::etcd::{ClusterStore, CredentialFiles, EtcdConfig, EtcdStore};

use crate::etcd::EtcdCluster;
use crate::{blocking, chain, timeouts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_read_from_files_authenticate_and_a_wrong_password_is_refused() {
    let cluster = blocking(|| EtcdCluster::start("auth"));
    blocking(|| {
        cluster.etcdctl_ok(&["user", "add", "root:root-pw"]);
        cluster.etcdctl_ok(&["user", "add", "tend:s3cret"]);
        cluster.etcdctl_ok(&["role", "add", "tend"]);
        cluster.etcdctl_ok(&["role", "grant-permission", "tend", "--prefix=true", "readwrite", "/t/"]);
        cluster.etcdctl_ok(&["user", "grant-role", "tend", "tend"]);
        cluster.etcdctl_ok(&["auth", "enable"]);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let user = dir.path().join("user");
    let password = dir.path().join("password");
    std::fs::write(&user, "tend\n").expect("write");
    std::fs::write(&password, "s3cret\n").expect("write");
    let mut config = EtcdConfig::new(cluster.endpoints());
    config.timeouts = timeouts();
    config.credentials = Some(CredentialFiles { username_file: user.clone(), password_file: password.clone() });

    let etcd = EtcdStore::connect(&config).await.unwrap_or_else(|e| panic!("{}", chain(&e)));
    etcd.put("/t/auth/k", b"v", None).await.expect("put with the role's permission");
    let e = etcd.put("/outside", b"v", None).await.expect_err("a put outside the role's prefix");
    assert_eq!(e.kind(), "denied", "{}", chain(&e));

    std::fs::write(&password, "wrong\n").expect("write");
    let e = EtcdStore::connect(&config).await.expect_err("a wrong password");
    assert_eq!(e.kind(), "denied", "{}", chain(&e));
    let text = chain(&e);
    assert!(text.starts_with("etcd connect http://"), "{text}");
    assert!(!text.contains("wrong"), "the password is in the message: {text}");
}
