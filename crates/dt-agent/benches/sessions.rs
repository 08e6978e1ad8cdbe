//! `cargo bench -p dt-agent --bench sessions`: locks against many live sessions.
//!
//! A real auth service (in process, SQLite, mTLS on loopback) and 20 access-point runtimes
//! that joined it with join tokens, each watching the cluster over its own connection and
//! holding 500 live sessions (10,000 in all). A lock is written to storage; the auth service's
//! change feed carries it to every runtime's watch, whose enforcer ends the matching sessions.
//! Printed: lock-to-termination p50/p99 for a lock matching one session (repeated) and for one
//! matching all 10,000, then the cost of one access decision next to the cost of the
//! connection it guards (a fresh mTLS connection plus one RPC to the auth service, and the
//! user-certificate check an SSH node does per login).
//!
//! Options (environment): `SESSIONS_RUNTIMES` (20), `SESSIONS_PER_RUNTIME` (500),
//! `SESSIONS_TRIALS` (30).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dt_agent::access::{Freshness, SessionTarget};
use dt_agent::sessions::{LiveSession, SessionRegistry};
use dt_agent::{JoinRequest, Runtime, RuntimeConfig};
use dt_auth::config::Config;
use dt_auth::server::AuthServer;
use dt_ca::Identity;
use dt_client::TrustPolicy;
use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_client::AuthServiceClient;
use dt_testkit::bench::{env_usize, ms, pct};
use dt_types::resource::{LockSpec, LockTarget, Resource, TokenRole, TokenSpec};
use dt_types::{Kind, Secret, ServiceKind};
use sha2::Digest;
use tokio::sync::mpsc;

struct BenchSession {
    identity: Identity,
    target: SessionTarget,
}

impl LiveSession for BenchSession {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn target(&self) -> &SessionTarget {
        &self.target
    }
}

fn identity(user: &str) -> Identity {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    Identity {
        username: user.parse().unwrap(),
        roles: vec!["bench".into()],
        logins: vec!["root".into()],
        bot: false,
        trait_logins: vec!["root".into()],
        device: None,
        not_before: now - time::Duration::minutes(1),
        not_after: now + time::Duration::hours(2),
    }
}

async fn put_lock(srv: &AuthServer, name: &str, target: LockTarget) {
    let lock: dt_types::Lock = Resource::new(
        name,
        LockSpec {
            target,
            message: Some("benchmark".into()),
            ..Default::default()
        },
    );
    srv.backend
        .put(
            &dt_auth::keys::resource(Kind::Lock, name),
            serde_json::to_vec(&lock).unwrap(),
            None,
        )
        .await
        .unwrap();
}

async fn join_token(srv: &AuthServer, i: usize) -> String {
    let token = format!("bench-join-token-{i}-{}", uuid::Uuid::new_v4());
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    let name = hash[..16].to_string();
    let mut res: Resource<TokenSpec> = Resource::new(
        name.clone(),
        TokenSpec {
            roles: vec![TokenRole::Node],
            bot_name: None,
            token_hash: hash,
        },
    );
    res.metadata.expires = Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    srv.backend
        .put(
            &dt_auth::keys::resource(Kind::Token, &name),
            serde_json::to_vec(&res).unwrap(),
            None,
        )
        .await
        .unwrap();
    srv.backend
        .put(
            &dt_auth::keys::join_token_index(&res.spec.token_hash),
            name.into_bytes(),
            None,
        )
        .await
        .unwrap();
    token
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let n_rt = env_usize("SESSIONS_RUNTIMES", 20);
    let per = env_usize("SESSIONS_PER_RUNTIME", 500);
    let trials = env_usize("SESSIONS_TRIALS", 30);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("auth"),
        ..Config::default()
    };
    config.listen = "127.0.0.1:0".parse().unwrap();
    let srv = AuthServer::bootstrap(config).await.unwrap();
    let files = srv.write_data_dir(&[]).unwrap();
    let tls = dt_auth::listener::tls_config(&srv, &files).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(dt_auth::listener::serve(
        srv.clone(),
        listener,
        tls,
        std::future::pending(),
    ));
    let pin = srv.host_ca.pin();
    let dt_types::AnyResource::Role(role) = dt_types::AnyResource::parse_documents(
        "kind: role\nversion: v7\nmetadata: {name: bench}\nspec: {allow: {logins: [root], node_labels: {'*': '*'}}}\n",
    )
    .unwrap()
    .remove(0) else {
        unreachable!()
    };
    srv.backend
        .put(
            &dt_auth::keys::resource(Kind::Role, "bench"),
            serde_json::to_vec(&role).unwrap(),
            None,
        )
        .await
        .unwrap();

    // 20 runtimes, each joined with its own token, each with `per` live sessions.
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut runtimes = Vec::new();
    for i in 0..n_rt {
        let token = join_token(&srv, i).await;
        let mut runtime = Runtime::start(RuntimeConfig {
            data_dir: dir.path().join(format!("ap{i}")),
            kind: ServiceKind::Node,
            name: format!("ap{i}"),
            advertise_addr: format!("127.0.0.1:{}", 10_000 + i),
            labels: BTreeMap::new(),
            resources: Vec::new(),
            heartbeat_every: Duration::from_secs(10),
            join: Some(JoinRequest {
                auth_server: addr.clone(),
                token: Secret::new(token),
                trust: TrustPolicy::Pin(pin.clone()),
            }),
            auth_servers: None,
        })
        .await
        .unwrap();
        // Sessions exist only once the view is loaded (an access point decides first); an
        // access point without a view ends everything (fail closed).
        let t0 = Instant::now();
        while !runtime.view.read(|v| v.is_loaded()) {
            assert!(t0.elapsed() < Duration::from_secs(30), "view never loaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let registry = Arc::new(SessionRegistry::<BenchSession>::default());
        for j in 0..per {
            let id = registry.next_id();
            registry.insert(
                id,
                BenchSession {
                    identity: identity(&format!("u{i}-{j}")),
                    target: SessionTarget::Ssh {
                        node: format!("ap{i}"),
                        login: "root".into(),
                    },
                },
            );
        }
        let tx = tx.clone();
        runtime.spawn(dt_agent::sessions::enforce(
            registry.clone(),
            runtime.view.clone(),
            Freshness::default(),
            "node",
            move |_, s: BenchSession, _why| {
                let _ = tx.send((s.identity.username.to_string(), Instant::now()));
                async {}
            },
        ));
        runtimes.push((runtime, registry));
    }
    // Every runtime has its view before the clock starts.
    let start = Instant::now();
    while !runtimes.iter().all(|(r, _)| r.view.read(|v| v.is_loaded())) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "views never loaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live: usize = runtimes.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(live, n_rt * per, "no session may end before a lock");
    assert!(rx.try_recv().is_err());
    println!(
        "{n_rt} access-point runtimes, {live} live sessions, one auth service (SQLite) on loopback"
    );

    // A lock that matches one session, `trials` times (a different user each time).
    let mut one = Vec::new();
    for t in 0..trials {
        let user = format!("u{}-{}", t % n_rt, t);
        let t0 = Instant::now();
        put_lock(
            &srv,
            &format!("one-{t}"),
            LockTarget {
                user: Some(user.clone()),
                ..Default::default()
            },
        )
        .await;
        let (who, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the locked session was not ended within 10 s")
            .unwrap();
        assert_eq!(who, user, "only the locked session ends");
        one.push(at - t0);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx.try_recv().is_err(),
        "a lock on one user ended another session"
    );
    one.sort();

    // A lock that matches every session (their common role).
    let remaining: usize = runtimes.iter().map(|(_, r)| r.len()).sum();
    let t0 = Instant::now();
    put_lock(
        &srv,
        "all",
        LockTarget {
            role: Some("bench".into()),
            ..Default::default()
        },
    )
    .await;
    let mut all = Vec::with_capacity(remaining);
    while all.len() < remaining {
        let (_, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("not every session ended within 30 s")
            .unwrap();
        all.push(at - t0);
    }
    all.sort();
    println!();
    println!("lock to termination          sessions    p50         p99         max");
    println!(
        "lock matching one session    {:>8}    {:<10}  {:<10}  {}",
        one.len(),
        ms(pct(&one, 0.5)),
        ms(pct(&one, 0.99)),
        ms(*one.last().unwrap())
    );
    println!(
        "lock matching all sessions   {:>8}    {:<10}  {:<10}  {}",
        all.len(),
        ms(pct(&all, 0.5)),
        ms(pct(&all, 0.99)),
        ms(*all.last().unwrap())
    );
    println!("(aims: p99 < 100 ms for one, < 1 s for all)");

    // The decision's cost next to the connection's own cost.
    let view = runtimes[0].0.view.clone();
    // 2 roles and 100 locks in the view, as in the SSH benchmark.
    for k in 0..100 {
        put_lock(
            &srv,
            &format!("other-{k}"),
            LockTarget {
                user: Some(format!("nobody-{k}")),
                ..Default::default()
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = srv
        .backend
        .delete(&dt_auth::keys::resource(Kind::Lock, "all"), None)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = identity("alice");
    let labels = BTreeMap::from([("env".to_string(), "dev".to_string())]);
    let target = dt_authz::Target::Ssh {
        node: "ap0",
        labels: &labels,
        login: "root",
    };
    let locks = view.read(|v| {
        v.active_locks(time::OffsetDateTime::now_utc())
            .unwrap()
            .len()
    });
    let n = 20_000;
    let t0 = Instant::now();
    let mut allowed = 0;
    for _ in 0..n {
        let now = time::OffsetDateTime::now_utc();
        if view
            .read(|v| dt_agent::access::decide(v, &id, &target, now, Freshness::default()))
            .is_ok()
        {
            allowed += 1;
        }
    }
    let decision = t0.elapsed() / n;
    assert_eq!(
        allowed, n,
        "the benchmark identity must be allowed (the whole path runs)"
    );

    let mut conn = Vec::new();
    for _ in 0..50 {
        let t0 = Instant::now();
        let ch = dt_client::connect::channel(
            &addr,
            TrustPolicy::Pin(pin.clone()),
            dt_agent::runtime::tls_identity(&runtimes[0].0.identity),
        )
        .await
        .unwrap();
        AuthServiceClient::new(ch)
            .ping(pb::PingRequest {})
            .await
            .unwrap();
        conn.push(t0.elapsed());
    }
    conn.sort();
    let key = dt_ca::ClientKey::generate().unwrap();
    let cert = srv
        .user_ca
        .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), &id)
        .unwrap();
    let ca = dt_ca::SshUserCaKey::from_openssh(&srv.user_ca.ssh_public_key_openssh()).unwrap();
    let t0 = Instant::now();
    for _ in 0..2_000 {
        ca.verify_for_login(&cert, "root", time::OffsetDateTime::now_utc())
            .unwrap();
    }
    let verify = t0.elapsed() / 2_000;
    println!();
    println!("per connection                               cost        decision / it");
    println!(
        "access decision ({locks} locks in the view)     {:<10}  1.00",
        format!("{:.1} µs", decision.as_secs_f64() * 1e6)
    );
    println!(
        "user certificate check (SSH login)           {:<10}  {:.3}",
        format!("{:.1} µs", verify.as_secs_f64() * 1e6),
        decision.as_secs_f64() / verify.as_secs_f64()
    );
    println!(
        "new mTLS connection + 1 RPC (p50)            {:<10}  {:.4}",
        ms(pct(&conn, 0.5)),
        decision.as_secs_f64() / pct(&conn, 0.5).as_secs_f64()
    );
    for (r, _) in runtimes {
        r.stop().await;
    }
}
