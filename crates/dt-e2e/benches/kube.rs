//! `cargo bench -p dt-e2e --bench kube`: `kubectl get pods` through the Kubernetes access
//! point against `kubectl get pods` straight to the same API server, as ratios.
//!
//! Real parts: `devtrust start`, `devtrust kube start`, `dtsh kube login` and the
//! `dtsh kube credentials` exec plugin (the binaries of this build), and the real `kubectl`.
//! The API server is the test-only one of `dt-fakekube` (no kube-apiserver runs here), so
//! the figures compare the paths, not a real cluster. Both paths use TLS with a client
//! certificate; the access point's path adds the exec plugin (a `dtsh` process per
//! `kubectl` run, as kubectl caches credentials only in-process), TLS to the access point,
//! the decision, the impersonation headers and the `kube.request` audit.
//!
//! Printed: the median and p90 latency of one `kubectl get pods` run (`BENCH_RUNS`, 20,
//! sequential), and `kubectl get pods` runs per second with 4 concurrent runners for
//! `BENCH_SECONDS` (10). Discovery is cached (`~/.kube/cache`) on both paths after a warm-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dt_testkit::programs::{DEVTRUST, DTCTL, DTSH};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dt_fakekube::{Credential, FakeKube};
use dt_testkit::{daemon, field, run, signup_login};

fn get_pods(kubeconfig: &Path, home: &Path, dtsh_home: &Path) -> Duration {
    let start = Instant::now();
    let out = Command::new("kubectl")
        .args(["get", "pods", "--request-timeout=20s"])
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env("DTSH_HOME", dtsh_home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("web-0"),
        "kubectl get pods failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

struct Figures {
    median: Duration,
    p90: Duration,
    per_second: f64,
}

fn measure(kubeconfig: &Path, home: &Path, dtsh_home: &Path, runs: usize, seconds: u64) -> Figures {
    for _ in 0..3 {
        get_pods(kubeconfig, home, dtsh_home);
    }
    let mut lat: Vec<Duration> = (0..runs)
        .map(|_| get_pods(kubeconfig, home, dtsh_home))
        .collect();
    lat.sort();
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while Instant::now() < until {
                    get_pods(kubeconfig, home, dtsh_home);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    Figures {
        median: lat[lat.len() / 2],
        p90: lat[lat.len() * 9 / 10],
        per_second: done.load(Ordering::Relaxed) as f64 / elapsed,
    }
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(FakeKube::start());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("auth");
    let (_auth, lines) = daemon(
        &DEVTRUST,
        &[
            "start",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("HOME", dir.path())],
        "Next:",
    );
    let addr = field(&lines, "listen:");
    let pin = field(&lines, "CA pin:");
    let dtctl = |args: &[&str]| run(Command::new(DTCTL).arg("--data-dir").arg(&data).args(args));
    let direct = dir.path().join("direct.kubeconfig");
    std::fs::write(&direct, api.kubeconfig(Credential::ClientCert)).unwrap();
    let token = dtctl(&["tokens", "add", "--type=kube", "--format=text"])
        .trim()
        .to_string();
    let ap_dir = dir.path().join("ap");
    let (_ap, _) = daemon(
        &DEVTRUST,
        &[
            "kube",
            "start",
            &format!("--auth-server={addr}"),
            &format!("--token={token}"),
            "--name=kube1",
            "--listen=127.0.0.1:0",
            &format!("--kubeconfig={}", direct.display()),
            &format!("--data-dir={}", ap_dir.display()),
            &format!("--ca-pin={pin}"),
            "--heartbeat=1s",
        ],
        &[],
        "listen:",
    );
    let role = dir.path().join("role.yaml");
    std::fs::write(
        &role,
        "kind: role\nversion: v7\nmetadata: {name: kube}\nspec: {allow: {kubernetes_labels: {'*': '*'}, kubernetes_groups: [viewers]}}\n",
    )
    .unwrap();
    dtctl(&["create", "-f", role.to_str().unwrap()]);
    let home = dir.path().join("alice");
    let kube_home = dir.path().join("kube-home");
    std::fs::create_dir_all(&kube_home).unwrap();
    let through = dir.path().join("through.kubeconfig");
    signup_login(dtctl, &DTSH, &addr, &pin, "alice", "kube", &home);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(DTSH)
            .args(["kube", "login", "kube1"])
            .env("DTSH_HOME", &home)
            .env("KUBECONFIG", &through)
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "kube1 never listed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let direct_home = dir.path().join("direct-home");
    std::fs::create_dir_all(&direct_home).unwrap();
    let d = measure(&direct, &direct_home, &home, runs, seconds);
    let t = measure(&through, &kube_home, &home, runs, seconds);
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!("kubectl get pods ({runs} sequential runs; 4 concurrent runners for {seconds}s)");
    println!(
        "  direct to the API server:      median {:7.1} ms  p90 {:7.1} ms  {:6.1} runs/s",
        ms(d.median),
        ms(d.p90),
        d.per_second
    );
    println!(
        "  through the access point:      median {:7.1} ms  p90 {:7.1} ms  {:6.1} runs/s",
        ms(t.median),
        ms(t.p90),
        t.per_second
    );
    println!(
        "  ratio (access point / direct): latency x{:.2} (p90 x{:.2}), throughput x{:.2}",
        ms(t.median) / ms(d.median),
        ms(t.p90) / ms(d.p90),
        t.per_second / d.per_second
    );

    // A lock ends a live `kubectl exec`: from `dtctl lock` returning to kubectl exiting.
    let mut live = Command::new("kubectl")
        .args(["exec", "web-0", "--", "sleep", "60"])
        .env("KUBECONFIG", &through)
        .env("HOME", &kube_home)
        .env("DTSH_HOME", &home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dtctl(&["events", "ls", "--format=json", "--type=kube.exec.start"]).contains("sleep 60")
    {
        assert!(Instant::now() < deadline, "the exec never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let locked = Instant::now();
    dtctl(&["lock", "--user=alice", "--message=bench"]);
    let lock_returned = locked.elapsed();
    live.wait().unwrap();
    let ended = locked.elapsed();
    println!(
        "  lock to the end of a live kubectl exec: {:.0} ms (dtctl lock itself: {:.0} ms)",
        ms(ended),
        ms(lock_returned)
    );
    drop(api);
}
