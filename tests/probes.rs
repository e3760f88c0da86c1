//! The probes' options against real servers, through `watchdog check --json`: method, headers,
//! Host override, basic auth from an env reference, status ranges, latency and body checks,
//! TCP banners — and a listener that never accepts, which a bare connect cannot tell apart
//! from a healthy one.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;

use common::{FakeApache, TempDir, banner_server, echo_server};

/// Runs `check --json --dry-run` and returns probe name -> (ok, reason).
fn check(dir: &TempDir, probes: &str, env: &[(&str, &str)]) -> BTreeMap<String, (bool, String)> {
    let cfg = dir.write("watchdog.toml", &format!("[watchdog]\nstate_dir = \"state\"\n\n[defaults]\ninterval = \"1m\"\ntimeout = \"1s\"\n\n{probes}"));
    common::check_rows(&cfg, env)
}

#[test]
fn http_options_reach_the_server() {
    let dir = TempDir::new("httpopts");
    let port = echo_server();
    let url = format!("http://127.0.0.1:{port}/status");
    let probe = |name: &str, extra: &str| {
        format!("[[probe]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{url}\"\n{extra}\n\n")
    };
    let probes = [
        probe("vhost", "host = \"www.example.com\"\nbody_contains = \"host: www.example.com\""),
        probe("header", "headers = { \"X-Probe\" = \"watchdog\" }\nbody_contains = \"x-probe: watchdog\""),
        // "user:s3cret" in base64
        probe("auth", "basic_auth_user = \"user\"\nbasic_auth_password = \"env:PROBE_PASSWORD\"\nbody_contains = \"Basic dXNlcjpzM2NyZXQ=\""),
        probe("method", "method = \"head\"\n"),
        probe("regex", "body_matches = \"^GET /status HTTP/1\\\\.1\""),
        probe("absent", "body_contains = \"not-there\""),
        probe("status", "expect_status = 204"),
    ]
    .concat();
    let r = check(&dir, &probes, &[("PROBE_PASSWORD", "s3cret")]);
    for name in ["vhost", "header", "auth", "method", "regex"] {
        assert!(r[name].0, "{name}: {:?}", r[name]);
        assert!(
            r[name].1.starts_with("HTTP 200 in "),
            "{name}: {:?}",
            r[name]
        );
    }
    assert!(!r["absent"].0);
    assert!(
        r["absent"].1.contains("the body lacks \"not-there\""),
        "{:?}",
        r["absent"]
    );
    assert!(
        r["status"].1.starts_with("HTTP 200 in"),
        "{:?}",
        r["status"]
    );
    assert!(!r["status"].0);
}

#[test]
fn a_missing_secret_fails_the_check_and_names_the_variable_not_a_value() {
    let dir = TempDir::new("secret");
    let port = echo_server();
    let probes = format!(
        "[[probe]]\nname = \"auth\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/\"\nbasic_auth_user = \"u\"\nbasic_auth_password = \"env:WD_TEST_UNSET_SECRET\"\n"
    );
    let r = check(&dir, &probes, &[]);
    assert_eq!(
        r["auth"],
        (
            false,
            "basic auth password: environment variable WD_TEST_UNSET_SECRET is not set".to_string()
        )
    );
}

#[test]
fn max_latency_fails_a_slow_but_correct_answer() {
    let dir = TempDir::new("latency");
    let apache = FakeApache::start(dir.path(), "slow:300");
    let probes = format!(
        "[[probe]]\nname = \"slow\"\nkind = \"http\"\nurl = \"{}\"\nmax_latency = \"100ms\"\n\n[[probe]]\nname = \"patient\"\nkind = \"http\"\nurl = \"{}\"\nmax_latency = \"900ms\"\n",
        apache.url("/"),
        apache.url("/")
    );
    let r = check(&dir, &probes, &[]);
    assert!(!r["slow"].0);
    assert!(
        r["slow"].1.contains("slower than max_latency 100 ms"),
        "{:?}",
        r["slow"]
    );
    assert!(r["patient"].0, "{:?}", r["patient"]);
}

#[test]
fn tcp_banner_proves_the_application_accepted() {
    let dir = TempDir::new("tcp");
    let ssh = banner_server("SSH-2.0-OpenSSH_9.2p1 Debian\r\n");
    let smtp = banner_server("220 mail ESMTP\r\n");
    // Bound and listening, never accepting: the kernel still completes handshakes.
    let deaf = TcpListener::bind("127.0.0.1:0").unwrap();
    let deaf_port = deaf.local_addr().unwrap().port();
    let closed = common::free_port();
    let probe = |name: &str, port: u16, extra: &str| {
        format!(
            "[[probe]]\nname = \"{name}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n{extra}\n\n"
        )
    };
    let probes = [
        probe("ssh", ssh, "expect = \"SSH-2.0\""),
        probe("wrong-banner", smtp, "expect = \"SSH-2.0\""),
        probe("deaf-connect-only", deaf_port, ""),
        probe("deaf-banner", deaf_port, "expect = \"SSH-2.0\""),
        probe("closed", closed, ""),
    ]
    .concat();
    let r = check(&dir, &probes, &[]);
    assert!(
        r["ssh"].0
            && r["ssh"]
                .1
                .starts_with("banner \"SSH-2.0-OpenSSH_9.2p1 Debian\" in"),
        "{:?}",
        r["ssh"]
    );
    assert!(!r["wrong-banner"].0);
    assert!(
        r["wrong-banner"].1.contains("got \"220 mail ESMTP"),
        "{:?}",
        r["wrong-banner"]
    );
    // The lesson of the backlog: a bare connect to a deaf listener passes...
    assert!(r["deaf-connect-only"].0, "{:?}", r["deaf-connect-only"]);
    // ...and a banner check does not.
    assert_eq!(
        r["deaf-banner"],
        (
            false,
            "timeout after 1 s (waiting for the banner)".to_string()
        )
    );
    assert!(
        r["closed"].1.contains("Connection refused"),
        "{:?}",
        r["closed"]
    );
    drop(deaf);
}
