//! The override policy: who may send `l5d-dtab`/`l5d-ctx-dtab`, what an
//! override may say, and the edge. Real sockets on loopback, real backends,
//! the real binary.

use sidetrack_tests::{TempDir, backend::Backend, client, eventually, proxy::Proxy};

/// The tutorial's routes: /svc/<host> goes to /host/<host>, which the file
/// namer serves from /srv/<name>; world goes to world-v1.
const DTAB: &str =
    "/srv => /#/io.l5d.fs; /host => /srv; /svc => /host; /host/world => /srv/world-v1";

struct Bed {
    dir: TempDir,
    _backends: [Backend; 3],
    proxy: Proxy,
}

fn bed(config: &str) -> Bed {
    let dir = TempDir::new("overrides");
    let backends = [
        Backend::start("hello"),
        Backend::start("world-v1"),
        Backend::start("world-v2"),
    ];
    for b in &backends {
        dir.write(&b.name, &b.fs_line());
    }
    let proxy = Proxy::with_dtab(&dir, DTAB, config, &[]);
    Bed {
        dir,
        _backends: backends,
        proxy,
    }
}

const STAGE_V2: &str = "l5d-dtab: /host/world => /srv/world-v2";

fn refused(b: &Bed) -> f64 {
    b.proxy
        .metric("sidetrack_errors_total", &[("kind", "override_refused")])
}

/// Under the default policy an override may bind any name the dtab and
/// namers define, but no literal address: every SSRF-shaped override (the
/// admin port, loopback, the node's addresses, cloud metadata) is answered
/// 403 with the entry and the rule, and nothing is forwarded.
#[test]
fn by_default_an_override_may_name_services_but_not_addresses() {
    let b = bed("");
    let staged = client::get(b.proxy.addr, "world", "/", &[STAGE_V2]);
    assert_eq!(staged.header("x-backend"), Some("world-v2"));
    let admin = b.proxy.admin;
    let backend = b._backends[0].addr;
    for target in [
        format!("/$/inet/{}/{}", admin.ip(), admin.port()),
        format!("/$/inet/127.0.0.1/{}", backend.port()),
        "/$/inet/198.18.0.1/4140".to_string(),
        "/$/inet/169.254.169.254/80".to_string(),
        format!("/srv/world-v2 | /$/inet/127.0.0.1/{}", admin.port()),
    ] {
        let header = format!("l5d-dtab: /host/world => {target}");
        let r = client::get(b.proxy.addr, "world", "/metrics", &[&header]);
        assert_eq!(r.status, 403, "{target}: {:?}", r.headers);
        assert_eq!(r.header("x-backend"), None);
        let err = r.header("l5d-err").unwrap_or_default();
        assert!(
            err.contains("override entry 0") && err.contains("denied_destinations"),
            "{err}"
        );
        // The same in l5d-ctx-dtab, from an upstream hop.
        let header = format!("l5d-ctx-dtab: /host/world => {target}");
        let r = client::get(b.proxy.addr, "world", "/", &[&header]);
        assert_eq!(r.status, 403, "ctx {target}");
    }
    assert_eq!(refused(&b), 10.0);
}

/// `trusted` honours overrides from listed networks only; others get 403.
#[test]
fn trusted_mode_honours_listed_sources_only() {
    let elsewhere = bed("overrides:\n  mode: trusted\n  trusted_sources: [198.18.0.0/15]\n");
    let r = client::get(elsewhere.proxy.addr, "world", "/", &[STAGE_V2]);
    assert_eq!(r.status, 403);
    assert!(
        r.header("l5d-err")
            .is_some_and(|e| e.contains("not accepted from 127.0.0.1")),
        "{:?}",
        r.headers
    );
    // Without an override the same client is served as usual.
    let plain = client::get(elsewhere.proxy.addr, "world", "/", &[]);
    assert_eq!(plain.header("x-backend"), Some("world-v1"));

    let here = bed("overrides:\n  mode: trusted\n  trusted_sources: [127.0.0.0/8]\n");
    let r = client::get(here.proxy.addr, "world", "/", &[STAGE_V2]);
    assert_eq!(r.header("x-backend"), Some("world-v2"));
}

/// `off` drops every override (counted); `on_refusal: drop` routes a
/// refused one as if it were not there, and never forwards it.
#[test]
fn dropped_overrides_route_as_if_absent_and_are_counted() {
    let off = bed("overrides:\n  mode: off\n");
    for _ in 0..3 {
        let r = client::get(off.proxy.addr, "world", "/", &[STAGE_V2]);
        assert_eq!(r.header("x-backend"), Some("world-v1"));
        assert!(r.json()["headers"].get("l5d-ctx-dtab").is_none());
    }
    assert_eq!(refused(&off), 3.0);

    let drop = bed("overrides:\n  on_refusal: drop\n");
    let ssrf = "l5d-dtab: /host/world => /$/inet/127.0.0.1/9";
    for _ in 0..3 {
        let r = client::get(drop.proxy.addr, "world", "/", &[ssrf]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("world-v1"));
        assert!(
            r.json()["headers"].get("l5d-ctx-dtab").is_none(),
            "the refused override is not forwarded"
        );
    }
    // Counted per request, cached route or not.
    assert_eq!(refused(&drop), 3.0);
    // An allowed override still works.
    let r = client::get(drop.proxy.addr, "world", "/", &[STAGE_V2]);
    assert_eq!(r.header("x-backend"), Some("world-v2"));
}

/// `rewritable_prefixes` and `allowed_destinations` narrow what an
/// override may say.
#[test]
fn prefixes_and_destinations_narrow_overrides() {
    let b = bed(
        "overrides:\n  rewritable_prefixes: [/host/world]\n  allowed_destinations: [/srv/world-v2]\n",
    );
    let ok = client::get(b.proxy.addr, "world", "/", &[STAGE_V2]);
    assert_eq!(ok.header("x-backend"), Some("world-v2"));
    let r = client::get(
        b.proxy.addr,
        "hello",
        "/",
        &["l5d-dtab: /host/hello => /srv/world-v2"],
    );
    assert_eq!(r.status, 403);
    assert!(r.header("l5d-err").unwrap().contains("rewritable_prefixes"));
    let r = client::get(
        b.proxy.addr,
        "world",
        "/",
        &["l5d-dtab: /host/world => /srv/hello"],
    );
    assert_eq!(r.status, 403);
    assert!(
        r.header("l5d-err")
            .unwrap()
            .contains("allowed_destinations")
    );
}

/// At the edge every `l5d-` header from the client is removed: its
/// override, its context, its request id.
#[test]
fn an_edge_proxy_removes_every_l5d_header() {
    let b = bed("overrides:\n  edge: true\n");
    let r = client::get(
        b.proxy.addr,
        "world",
        "/",
        &[
            STAGE_V2,
            "l5d-ctx-dtab: /host/world => /srv/world-v2",
            "l5d-ctx-trace: abc",
            "l5d-reqid: client-chosen",
        ],
    );
    assert_eq!(r.header("x-backend"), Some("world-v1"));
    let headers = &r.json()["headers"];
    assert!(headers.get("l5d-ctx-dtab").is_none(), "{headers}");
    assert!(headers.get("l5d-ctx-trace").is_none(), "{headers}");
    let reqid = headers["l5d-reqid"].as_str().unwrap();
    assert!(reqid != "client-chosen" && reqid.len() == 16, "{reqid}");
}

/// The policy is reloaded with the config file.
#[test]
fn the_policy_reloads_live() {
    let b = bed("overrides:\n  mode: any\n");
    let r = client::get(b.proxy.addr, "world", "/", &[STAGE_V2]);
    assert_eq!(r.header("x-backend"), Some("world-v2"));
    b.dir.write("config.yaml", "overrides:\n  mode: off\n");
    assert!(eventually(10, || {
        client::get(b.proxy.addr, "world", "/", &[STAGE_V2]).header("x-backend") == Some("world-v1")
    }));
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `l5d-dtab-sig` for `dtab`, signed with `key` named `kid`, valid for
/// `secs` more seconds (negative: expired).
fn signature(dtab: &str, kid: &str, key: &[u8], secs: i64) -> String {
    let dtab = sidetrack::dtab::Dtab::parse(dtab).unwrap();
    let exp = unix_now().saturating_add_signed(secs);
    format!(
        "l5d-dtab-sig: {}",
        sidetrack::policy::signing::sign(&dtab, kid, key, exp)
    )
}

/// `signed` honours an override signed with a key the proxy holds, until
/// it expires, and refuses one unsigned, tampered with, expired, replayed
/// after its expiry, or signed with a key since removed. The signature
/// goes on beside the override it covers.
#[test]
fn signed_overrides_are_honoured_only_with_a_valid_signature() {
    let keys = TempDir::new("override-keys");
    keys.write("2026-12", "december secret\n");
    keys.write("2027-01", "january secret\n");
    let b = bed(&format!(
        "watch_interval_ms: 50\noverrides:\n  mode: signed\n  keys_dir: {}\n",
        keys.str()
    ));
    let dtab = "/host/world => /srv/world-v2";
    let signed = signature(dtab, "2026-12", b"december secret", 3600);
    let r = client::get(b.proxy.addr, "world", "/", &[STAGE_V2, &signed]);
    assert_eq!(r.header("x-backend"), Some("world-v2"), "{:?}", r.headers);
    let seen = &r.json()["headers"];
    assert_eq!(seen["l5d-ctx-dtab"], "/host/world=>/srv/world-v2");
    assert_eq!(
        seen["l5d-dtab-sig"].as_str(),
        signed.strip_prefix("l5d-dtab-sig: ")
    );
    // Spacing is not part of what is signed.
    let r = client::get(
        b.proxy.addr,
        "world",
        "/",
        &["l5d-dtab: /host/world=>/srv/world-v2;", &signed],
    );
    assert_eq!(r.header("x-backend"), Some("world-v2"));

    let refusal = |headers: &[&str], why: &str| {
        let r = client::get(b.proxy.addr, "world", "/", headers);
        assert_eq!(r.status, 403, "{headers:?}: {:?}", r.headers);
        let err = r.header("l5d-err").unwrap_or_default().to_owned();
        assert!(err.contains(why), "{headers:?}: {err}");
    };
    refusal(&[STAGE_V2], "not signed");
    let other = signature(
        "/host/world => /srv/hello",
        "2026-12",
        b"december secret",
        3600,
    );
    refusal(&[STAGE_V2, &other], "does not match");
    let expired = signature(dtab, "2026-12", b"december secret", -1);
    refusal(&[STAGE_V2, &expired], "expired");
    let forged = signature(dtab, "2026-12", b"guessed", 3600);
    refusal(&[STAGE_V2, &forged], "does not match");

    // Honoured until it expires, then refused though its route is cached.
    let brief = signature(dtab, "2027-01", b"january secret", 2);
    let r = client::get(b.proxy.addr, "world", "/", &[STAGE_V2, &brief]);
    assert_eq!(r.header("x-backend"), Some("world-v2"));
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    refusal(&[STAGE_V2, &brief], "expired");

    // A key removed from the directory no longer signs.
    std::fs::remove_file(keys.path().join("2026-12")).unwrap();
    assert!(eventually(10, || {
        client::get(b.proxy.addr, "world", "/", &[STAGE_V2, &signed]).status == 403
    }));
    refusal(&[STAGE_V2, &signed], "does not hold");
    assert!(refused(&b) >= 7.0);
}

/// `sidetrack stage` builds and signs the override, and its `curl` line,
/// run as printed, reaches the staged version through a proxy that
/// honours signed overrides only; `--proxy` shows what each name binds to,
/// a typo as `neg`.
#[test]
fn sidetrack_stage_prints_a_curl_line_that_stages_and_checks_names() {
    let keys = TempDir::new("stage-keys");
    keys.write("2026-12", "december secret\n");
    let b = bed(&format!(
        "overrides:\n  mode: signed\n  keys_dir: {}\n",
        keys.str()
    ));
    let stage = |args: &[&str]| {
        let out = std::process::Command::new(sidetrack_tests::proxy::binary())
            .arg("stage")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let key = keys.path().join("2026-12");
    let via = b.proxy.addr.to_string();
    let admin = format!("http://{}", b.proxy.admin);
    let out = stage(&[
        "world=world-v2",
        "--key",
        key.to_str().unwrap(),
        "--ttl",
        "10m",
        "--via",
        &via,
        "--proxy",
        &admin,
    ]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("l5d-dtab: /host/world=>/srv/world-v2"));
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("l5d-dtab-sig: kid=2026-12, exp=")
    );
    assert_eq!(lines.next(), Some(""));
    let curl = lines.next().unwrap();
    assert!(curl.starts_with("curl -x "), "{curl}");
    assert_eq!(lines.next(), Some("/svc/world -> /#/io.l5d.fs/world-v2"));
    let ran = std::process::Command::new("sh")
        .args(["-c", &format!("{curl} --silent --max-time 10")])
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&ran.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&ran.stdout)));
    assert_eq!(body["backend"], "world-v2");
    // Unsigned, the same line is refused.
    let unsigned = stage(&["world=world-v2", "--via", &via]);
    let curl = unsigned.lines().nth(2).unwrap();
    let ran = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("{curl} --silent --max-time 10 -o /dev/null -w '%{{http_code}}'"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "403");
    // A typo is seen before any request: the name binds to nothing.
    let typo = stage(&["world=wrold-v2", "--proxy", &admin, "--json"]);
    let typo: serde_json::Value = serde_json::from_str(&typo).unwrap();
    assert_eq!(typo["binds"][0]["name"], "/svc/world");
    assert_eq!(typo["binds"][0]["staged"][0], "neg");
    // Requests would fall back to the base dtab's version.
    assert_eq!(typo["binds"][0]["to"][0], "/#/io.l5d.fs/world-v1");
    let text = stage(&["world=wrold-v2", "--proxy", &admin]);
    assert!(
        text.ends_with(
            "/svc/world -> /#/io.l5d.fs/world-v1 (the staged version binds to nothing: neg)\n"
        ),
        "{text}"
    );
}
