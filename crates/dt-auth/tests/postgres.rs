//! A representative subset of the device-trust cheats on PostgreSQL: a fresh database per
//! test at `host=127.0.0.1 port=5432 user=postgres` (override with `DEVTRUST_TEST_PG`),
//! dropped at the end. PostgreSQL being unreachable fails these tests; they never skip.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use support::*;

fn on_postgres<F>(scenario: F)
where
    F: AsyncFnOnce(&Cluster),
{
    block_on(async {
        let cl = Cluster::start(Options {
            postgres: true,
            ..Options::default()
        })
        .await;
        assert_eq!(cl.srv.backend.kind(), "postgres");
        scenario(&cl).await;
        cl.stop().await;
    })
}

#[test]
fn pg_token_reused_after_a_successful_enrollment() {
    on_postgres(async |cl| support::scenarios::token_reused_after_success(cl).await)
}

#[test]
fn pg_successful_enroll_and_authenticate() {
    on_postgres(async |cl| support::scenarios::enroll_and_authenticate(cl).await)
}

#[test]
fn pg_replayed_challenge_response() {
    on_postgres(async |cl| support::scenarios::replayed_response(cl).await)
}
