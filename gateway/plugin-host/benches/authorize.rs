//! authorize() through the plugin host on warm instances: the latency distribution of
//! single calls and the throughput of concurrent callers, with the RBAC plugin.
//!
//!     PIER_RBAC_WASM=plugins/target/wasm32-wasip2/release/pier_rbac.wasm \
//!         cargo bench -p pier-plugin-host --bench authorize
//!
//! Targets (issue 3): median <= 2 us, p99 <= 20 us.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pier_auth::{AccessRequest, Action, Authorizer, Identity, Subject};
use pier_plugin_host::{Grants, PluginAuthorizer, PluginSettings, Runtime};

fn config() -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "system_admins": ["admin"],
        "projects": [
            {"name": "team", "public": false,
             "members": {"alice": "project-admin", "bob": "developer", "carol": "guest"}},
            {"name": "library", "public": true}
        ]
    });
    v.as_object().cloned().unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let Ok(wasm) = std::env::var("PIER_RBAC_WASM") else {
        eprintln!("set PIER_RBAC_WASM to the built pier_rbac.wasm (benches/auth/run.sh does)");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("pier-bench-authorize-{}", std::process::id()));
        let runtime = Arc::new(Runtime::new(&dir.join("cache")).expect("runtime"));
        let mut s = PluginSettings::new("rbac", wasm.into(), dir.join("kv"));
        s.grants = Grants::parse(&["log".into(), "config".into()]).expect("grants");
        s.config = config();
        let auth = Arc::new(PluginAuthorizer::load(runtime, s).await.expect("load rbac"));
        let req = AccessRequest {
            subject: Subject::User(Identity {
                name: "bob".into(),
                groups: vec![],
            }),
            action: Action::Push,
            repository: Some("team/app".into()),
            client: "127.0.0.1:40000".into(),
            context: pier_auth::RequestContext::new(pier_auth::RequestRoute::Manifest)
                .with_method("PUT"),
        };
        for _ in 0..20_000 {
            auth.authorize(&req).await.expect("warm-up call");
        }
        let n = 200_000;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let d = auth.authorize(&req).await.expect("call");
            samples.push(t.elapsed());
            assert!(d.is_allow());
        }
        samples.sort_unstable();
        let median = percentile(&samples, 0.5);
        let p99 = percentile(&samples, 0.99);
        let p999 = percentile(&samples, 0.999);
        println!("authorize() single caller, {n} calls on a warm instance:");
        println!(
            "  median {:.2} us, p99 {:.2} us, p99.9 {:.2} us",
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            p999.as_secs_f64() * 1e6
        );
        println!(
            "  target median <= 2 us: {}; p99 <= 20 us: {}",
            if median <= Duration::from_micros(2) {
                "PASS"
            } else {
                "MISS"
            },
            if p99 <= Duration::from_micros(20) {
                "PASS"
            } else {
                "MISS"
            }
        );
        // Throughput: 8 concurrent callers for 2 s.
        let stop = Instant::now() + Duration::from_secs(2);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (a, r) = (auth.clone(), req.clone());
            tasks.push(tokio::spawn(async move {
                let mut k = 0u64;
                while Instant::now() < stop {
                    for _ in 0..64 {
                        a.authorize(&r).await.expect("call");
                    }
                    k += 64;
                    tokio::task::yield_now().await;
                }
                k
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        println!(
            "  throughput, 8 concurrent callers on 2 threads: {:.0} calls/s",
            total as f64 / 2.0
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
