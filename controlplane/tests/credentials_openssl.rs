//! Everything the common `openssl` command line produces imports: self-signed RSA and
//! ECDSA, `genpkey` keys, encrypted PKCS#8 and legacy encrypted PEM keys, PKCS#12
//! (current and `-legacy` algorithms), and CA-issued chains with an intermediate.

mod common;

use common::{Alg, intermediate_ca, leaf, openssl, read, root_ca};
use shunt_control::credentials::{
    CredentialError, KeyFormat, MemorySecretStore, Secret, TrustStores, import_pem, import_pkcs12,
};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

const SUBJ: &str = "/CN=site-a.example";

#[test]
fn self_signed_rsa_and_ecdsa_from_req_x509() {
    let d = tmp();
    let dir = d.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "rsa.key",
            "-out",
            "rsa.pem",
            "-days",
            "365",
            "-nodes",
            "-subj",
            SUBJ,
            "-addext",
            "subjectAltName=DNS:site-a.example",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-keyout",
            "ec.key",
            "-out",
            "ec.pem",
            "-days",
            "365",
            "-nodes",
            "-subj",
            SUBJ,
        ],
    );
    let rsa = import_pem(&read(dir, "rsa.pem"), &read(dir, "rsa.key"), None).unwrap();
    assert_eq!(rsa.key.format(), KeyFormat::Pkcs8);
    assert_eq!(rsa.info.subject_alt_names, ["site-a.example"]);
    assert!(rsa.info.subject.contains("site-a.example"));
    let ec = import_pem(&read(dir, "ec.pem"), &read(dir, "ec.key"), None).unwrap();
    assert_eq!(ec.chain.len(), 1);

    // A key and certificate in one file, as many guides concatenate them.
    let mut both = read(dir, "ec.key");
    both.extend(read(dir, "ec.pem"));
    import_pem(&both, &both, None).unwrap();

    // The wrong key for the certificate is refused with a clear error.
    let err = import_pem(&read(dir, "rsa.pem"), &read(dir, "ec.key"), None).unwrap_err();
    assert!(matches!(err, CredentialError::KeyMismatch), "{err}");
}

#[test]
fn genpkey_and_traditional_formats() {
    let d = tmp();
    let dir = d.path();
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "g.key",
        ],
    );
    openssl(
        dir,
        &[
            "req", "-new", "-x509", "-key", "g.key", "-out", "g.pem", "-days", "10", "-subj", SUBJ,
        ],
    );
    import_pem(&read(dir, "g.pem"), &read(dir, "g.key"), None).unwrap();

    // PKCS#1 ("BEGIN RSA PRIVATE KEY").
    openssl(
        dir,
        &["rsa", "-in", "g.key", "-traditional", "-out", "g1.key"],
    );
    assert!(
        String::from_utf8(read(dir, "g1.key"))
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    let id = import_pem(&read(dir, "g.pem"), &read(dir, "g1.key"), None).unwrap();
    assert_eq!(id.key.format(), KeyFormat::Pkcs1);

    // SEC1 ("BEGIN EC PRIVATE KEY"), with the EC PARAMETERS block `ecparam -genkey` adds.
    openssl(
        dir,
        &["ecparam", "-name", "prime256v1", "-genkey", "-out", "e.key"],
    );
    openssl(
        dir,
        &[
            "req", "-new", "-x509", "-key", "e.key", "-out", "e.pem", "-days", "10", "-subj", SUBJ,
        ],
    );
    let id = import_pem(&read(dir, "e.pem"), &read(dir, "e.key"), None).unwrap();
    assert_eq!(id.key.format(), KeyFormat::Sec1);
}

#[test]
fn encrypted_keys_need_the_password() {
    let d = tmp();
    let dir = d.path();
    // req without -nodes: encrypted PKCS#8.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "k.key",
            "-passout",
            "pass:s3cret",
            "-out",
            "k.pem",
            "-days",
            "10",
            "-subj",
            SUBJ,
        ],
    );
    let (cert, key) = (read(dir, "k.pem"), read(dir, "k.key"));
    assert!(
        String::from_utf8(key.clone())
            .unwrap()
            .contains("ENCRYPTED PRIVATE KEY")
    );
    assert!(matches!(
        import_pem(&cert, &key, None),
        Err(CredentialError::PasswordNeeded)
    ));
    let err = import_pem(&cert, &key, Some(&Secret::from("wrong"))).unwrap_err();
    assert!(matches!(err, CredentialError::WrongPassword), "{err:?}");
    import_pem(&cert, &key, Some(&Secret::from("s3cret"))).unwrap();

    // genpkey -aes256, ECDSA.
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes256",
            "-pass",
            "pass:s3cret",
            "-out",
            "ec.key",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "ec.key",
            "-passin",
            "pass:s3cret",
            "-out",
            "ec.pem",
            "-days",
            "10",
            "-subj",
            SUBJ,
        ],
    );
    import_pem(
        &read(dir, "ec.pem"),
        &read(dir, "ec.key"),
        Some(&Secret::from("s3cret")),
    )
    .unwrap();

    // Legacy "Proc-Type: 4,ENCRYPTED" keys, AES and 3DES.
    for (cipher, file) in [
        ("-aes256", "l1.key"),
        ("-aes128", "l2.key"),
        ("-des3", "l3.key"),
    ] {
        openssl(
            dir,
            &[
                "rsa",
                "-in",
                "k.key",
                "-passin",
                "pass:s3cret",
                "-traditional",
                cipher,
                "-passout",
                "pass:older",
                "-out",
                file,
            ],
        );
        let text = read(dir, file);
        assert!(
            String::from_utf8(text.clone())
                .unwrap()
                .contains("Proc-Type: 4,ENCRYPTED")
        );
        let id = import_pem(&cert, &text, Some(&Secret::from("older"))).unwrap();
        assert_eq!(id.key.format(), KeyFormat::Pkcs1);
        let err = import_pem(&cert, &text, Some(&Secret::from("nope"))).unwrap_err();
        assert!(
            matches!(err, CredentialError::WrongPassword),
            "{cipher}: {err}"
        );
    }
    openssl(
        dir,
        &[
            "ec",
            "-in",
            "ec.key",
            "-passin",
            "pass:s3cret",
            "-aes128",
            "-passout",
            "pass:x",
            "-out",
            "lec.key",
        ],
    );
    let id = import_pem(
        &read(dir, "ec.pem"),
        &read(dir, "lec.key"),
        Some(&Secret::from("x")),
    )
    .unwrap();
    assert_eq!(id.key.format(), KeyFormat::Sec1);
}

#[test]
fn pkcs12_current_and_legacy() {
    let d = tmp();
    let dir = d.path();
    root_ca(dir, "root");
    intermediate_ca(dir, "inter", "root");
    leaf(dir, "a", "site-a.example", "inter", Alg::Rsa, 30);
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "a.key",
            "-in",
            "a.pem",
            "-certfile",
            "inter.pem",
            "-out",
            "a.p12",
            "-passout",
            "pass:p12pass",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-legacy",
            "-inkey",
            "a.key",
            "-in",
            "a.pem",
            "-out",
            "a-legacy.p12",
            "-passout",
            "pass:p12pass",
        ],
    );
    let id = import_pkcs12(&read(dir, "a.p12"), &Secret::from("p12pass")).unwrap();
    assert_eq!(id.chain.len(), 2);
    assert!(
        id.info.subject.contains("site-a.example"),
        "leaf first: {}",
        id.info.subject
    );
    // `-legacy`: RC2-40 certificate bag and 3DES key bag, as OpenSSL 1.x wrote them.
    let legacy = import_pkcs12(&read(dir, "a-legacy.p12"), &Secret::from("p12pass")).unwrap();
    assert_eq!(legacy.chain.len(), 1);
    let err = import_pkcs12(&read(dir, "a.p12"), &Secret::from("bad")).unwrap_err();
    assert!(matches!(err, CredentialError::WrongPassword), "{err}");
}

#[test]
fn ca_issued_chain_and_trust_store() {
    let d = tmp();
    let dir = d.path();
    root_ca(dir, "root");
    intermediate_ca(dir, "inter", "root");
    leaf(dir, "b", "site-b.example", "inter", Alg::Ec, 30);
    let id = import_pem(&read(dir, "b-chain.pem"), &read(dir, "b.key"), None).unwrap();
    assert_eq!(id.chain.len(), 2);
    assert_eq!(id.info.subject_alt_names, ["site-b.example", "127.0.0.1"]);

    let mut stores = TrustStores::new();
    stores
        .import_pem("partners", &read(dir, "root.pem"))
        .unwrap();
    stores
        .import_pem("partners", &read(dir, "root.pem"))
        .unwrap();
    assert_eq!(stores.certificates("partners").unwrap().len(), 1);
    assert!(matches!(
        stores.certificates("other"),
        Err(CredentialError::NoTrustStore(_))
    ));

    // The private key goes to the secret store, and comes back usable.
    let store = MemorySecretStore::new();
    let stored = id.store(&store, "own").unwrap();
    stored.certified_key(&store).unwrap();
    store.set_sealed(true);
    assert!(stored.certified_key(&store).is_err());
}
