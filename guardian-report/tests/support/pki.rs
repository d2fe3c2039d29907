//! Test certificates made with openssl: a CA, a server certificate for
//! 127.0.0.1, client certificates. Shared by the link's TLS test and the
//! fleet's certificate-mapping test (included with `#[path]`).

#![allow(dead_code)]

use std::{path::Path, process::Command};

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate for
/// each of `clients` (subject `CN=<client>`, files `<client>.pem` and
/// `<client>.key`; the first also as `client.pem`/`client.key`), made with
/// openssl in `dir`; and a second, unrelated CA (`other-ca.pem`).
pub fn make_pki(dir: &Path, clients: &[&str]) {
    for (ca, cn) in [("ca", "guardian-test-ca"), ("other-ca", "someone-else")] {
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
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
    }
    let mut certs = vec![(
        "server".to_owned(),
        "127.0.0.1".to_owned(),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )];
    for c in clients {
        certs.push((
            c.to_string(),
            c.to_string(),
            "extendedKeyUsage=clientAuth\n",
        ));
    }
    for (name, cn, ext) in certs {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    if let Some(first) = clients.first() {
        for ext in ["pem", "key"] {
            std::fs::copy(
                dir.join(format!("{first}.{ext}")),
                dir.join(format!("client.{ext}")),
            )
            .unwrap();
        }
    }
}
