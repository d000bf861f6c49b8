//! A remote licence server on loopback: fetch, verify, and the errors an operator sees.

use std::time::SystemTime;

use shunt_control::licence::{
    LicenceError, LicenceServer, LicenceSigner, LicenceSource, LicenceTerms, LicenceVerifier,
    RemoteLicence, SECURE_PEERING, secure_peering_allowed,
};

fn terms(id: &str) -> LicenceTerms {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    LicenceTerms {
        licence_id: id.into(),
        customer: "Example Ltd".into(),
        features: vec![SECURE_PEERING.into()],
        not_before: now - 60,
        not_after: now + 86400,
    }
}

#[tokio::test]
async fn fetch_from_a_licence_server() {
    let (signer, _) = LicenceSigner::generate().unwrap();
    let server = LicenceServer::new();
    server.assign("site-a", &signer.sign(&terms("A-1")).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(server.clone().serve(listener));
    let verifier = LicenceVerifier::new(&signer.public_key()).unwrap();

    let file = RemoteLicence {
        server: addr,
        appliance: "site-a".into(),
    }
    .fetch()
    .await
    .unwrap();
    let licence = verifier.verify(&file).unwrap();
    assert_eq!(licence.terms().licence_id, "A-1");
    secure_peering_allowed(Some(&licence), SystemTime::now()).unwrap();

    // Unknown appliance, until a default licence is set.
    let other = RemoteLicence {
        server: addr,
        appliance: "site-z".into(),
    };
    let err = other.fetch().await.unwrap_err();
    assert!(
        matches!(err, LicenceError::Server { .. }) && err.to_string().contains("site-z"),
        "{err}"
    );
    server.set_default(&signer.sign(&terms("DEFAULT")).unwrap());
    assert_eq!(
        verifier
            .verify(&other.fetch().await.unwrap())
            .unwrap()
            .terms()
            .licence_id,
        "DEFAULT"
    );

    // A server serving licences signed by someone else does not help.
    let (rogue, _) = LicenceSigner::generate().unwrap();
    server.assign("site-a", &rogue.sign(&terms("ROGUE")).unwrap());
    let file = RemoteLicence {
        server: addr,
        appliance: "site-a".into(),
    }
    .fetch()
    .await
    .unwrap();
    assert!(matches!(
        verifier.verify(&file),
        Err(LicenceError::BadSignature)
    ));

    task.abort();
    // No server listening: a clear error naming the server.
    let err = RemoteLicence {
        server: addr,
        appliance: "site-a".into(),
    }
    .fetch()
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
