//! TPM credential costs: server CPU per enrollment verification and per authentication quote
//! (dt-attest, pure), and client wall time per TPM operation on a fresh swtpm.
//!
//! `cargo run --release -p dt-device --features tpm --example tpm_bench [ITERATIONS]`
// A benchmark binary: failing loudly is the right behaviour.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

#[cfg(feature = "tpm")]
#[cfg(not(feature = "tpm"))]
fn main() {
    eprintln!(
        "tpm_bench needs the `tpm` feature: cargo run --release -p dt-device --features tpm --example tpm_bench"
    );
    std::process::exit(2);
}

#[cfg(feature = "tpm")]
fn main() {
    use std::time::{Duration, Instant, SystemTime};

    use dt_attest::tpm::{self, PcrValue, TpmEnrollRequest, TpmQuote};
    use dt_device::tpm::{AkAlgorithm, TpmKeyStore};

    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let ca = dt_testkit::swtpm::LocalCa::new();
    let swtpm = dt_testkit::swtpm::Swtpm::start_with_ek_certs(&ca);
    let allowed = vec![ca.issuer_pem()];
    let per = |d: Duration, n: u32| d.as_secs_f64() * 1e6 / f64::from(n);
    let mut rng = dt_testkit::swtpm::rng();

    for ak_alg in [AkAlgorithm::EccP256, AkAlgorithm::Rsa2048] {
        let dir = tempfile::tempdir().unwrap();
        let store = TpmKeyStore::new(swtpm.tcti.clone(), dir.path()).with_ak_algorithm(ak_alg);
        println!(
            "== RSA-2048 EK with certificate, {ak_alg:?} AK, swtpm at {}",
            swtpm.tcti
        );

        let t = Instant::now();
        let ev = store.enrollment_evidence().unwrap();
        println!(
            "client enrollment_evidence (creates the AK): {:>9.0} µs",
            per(t.elapsed(), 1)
        );
        let t = Instant::now();
        store.enrollment_evidence().unwrap();
        println!(
            "client enrollment_evidence (AK exists):      {:>9.0} µs",
            per(t.elapsed(), 1)
        );

        let req = TpmEnrollRequest {
            ek_public: ev.ek_public,
            ek_cert: ev.ek_cert,
            ak_public: ev.ak_public,
        };
        let (state, challenge) =
            tpm::begin_enrollment(&req, &allowed, SystemTime::now(), &mut rng).unwrap();
        let t = Instant::now();
        let secret = store
            .activate_credential(
                &challenge.credential.credential_blob,
                &challenge.credential.encrypted_secret,
            )
            .unwrap();
        println!(
            "client activate_credential:                  {:>9.0} µs",
            per(t.elapsed(), 1)
        );
        let t = Instant::now();
        let q = store.quote(&challenge.nonce).unwrap();
        println!(
            "client quote (+ pcr read):                   {:>9.0} µs",
            per(t.elapsed(), 1)
        );
        let quote = TpmQuote {
            attest: q.attest,
            signature: q.signature,
            pcrs: q
                .pcrs
                .into_iter()
                .map(|p| PcrValue {
                    index: p.index,
                    digest: p.digest,
                })
                .collect(),
        };
        let cred = tpm::finish_enrollment(state, &secret, &quote).unwrap();

        // Server: begin (EK chain check + MakeCredential) and finish (secret + quote).
        let t = Instant::now();
        let mut states = Vec::new();
        for _ in 0..iterations {
            states.push(
                tpm::begin_enrollment(&req, &allowed, SystemTime::now(), &mut rng)
                    .unwrap()
                    .0,
            );
        }
        let begin = t.elapsed();
        let t = Instant::now();
        for s in states {
            // Wrong secret on purpose: measures the constant-time compare only; the quote
            // check is measured below on its own.
            let _ = tpm::finish_enrollment(s, &[0; 32], &quote);
        }
        let _ = t.elapsed();
        let t = Instant::now();
        for _ in 0..iterations {
            tpm::verify_auth_quote(&cred.ak_public, &challenge.nonce, &quote).unwrap();
        }
        let verify = t.elapsed();
        println!(
            "server begin_enrollment (chain + MakeCredential): {:>7.0} µs",
            per(begin, iterations)
        );
        println!(
            "server quote verification (auth, and enrollment finish): {:>5.0} µs",
            per(verify, iterations)
        );
        println!(
            "server enrollment total ≈ {:>5.0} µs",
            per(begin + verify, iterations)
        );
    }
}
