//! `watchdog validate` against the real binary: every problem at once, each naming file, line,
//! column and probe; exit 78 on errors, 0 with warnings only.

mod common;

use common::{TempDir, watchdog};

const BROKEN: &str = r#"[watchdog]
state_dir = "state"
include = ["conf.d/*.toml"]

[defaults]
interval = "5s"
timeout = "2 parsecs"
fail_after = 0

[[probe]]
name = "apache"
kind = "http"
url = "http://127.0.0.1:8080/"
intreval = "1s"
body_contains = "BusyWorkers"

[[probe]]
name = "apache"
kind = "tcp"
address = "127.0.0.1:80"
timeout = "10s"

[[rule]]
probe = "apache"
when = "down"
do = ["restart-apach"]

[action.restart-apache]
kind = "signal"
pidfile = "/run/apache2.pid"

[action.page]
kind = "webhook"
url = "http://127.0.0.1:9/"
token = "hunter2"
"#;

const INCLUDED: &str = r#"[[probe]]
name = "ssh"
kind = "tcp"
address = "127.0.0.1:22"
expct = "SSH-2.0"
"#;

#[test]
fn every_problem_in_one_run_with_file_line_and_probe() {
    let dir = TempDir::new("validate");
    let main = dir.write("watchdog.toml", BROKEN);
    let included = dir.write("conf.d/ssh.toml", INCLUDED);
    let (code, _, stderr) = watchdog(&["validate", "--config", main.to_str().unwrap()]);
    assert_eq!(code, 78, "EX_CONFIG expected:\n{stderr}");

    let m = main.display().to_string();
    let i = included.display().to_string();
    let expected = [
        format!("{m}:7:11: [defaults]: `timeout`: `2 parsecs` is not a duration"),
        format!("{m}:8:14: [defaults]: `fail_after` must be at least 1 (got 0)"),
        format!("{m}:14:1: probe \"apache\": unknown key `intreval` (did you mean `interval`?)"),
        format!("{m}:18:8: probe \"apache\": duplicate probe name: already defined at {m}:11"),
        format!("{m}:21:11: probe \"apache\": timeout (10s) must be shorter than interval (5s)"),
        format!(
            "{m}:26:7: rule for probe \"apache\": unknown action \"restart-apach\" (did you mean \"restart-apache\"?)"
        ),
        format!("{m}:35:9: action \"page\": `token`: secrets are given by reference only"),
        // deny_unknown_fields holds in included files too, with their own path.
        format!("{i}:5:1: probe \"ssh\": unknown key `expct` (did you mean `expect`?)"),
    ];
    for want in &expected {
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(want.as_str())),
            "missing `{want}` in:\n{stderr}"
        );
    }
    // Errors and warnings are reported apart, errors first.
    let errors_at = stderr.find(" errors:").expect("an errors section");
    let warnings_at = stderr.find(" warning").expect("a warnings section");
    assert!(errors_at < warnings_at, "{stderr}");
    assert!(stderr.contains("no rule uses this action"), "{stderr}");
}

#[test]
fn deny_unknown_fields_in_every_section() {
    let dir = TempDir::new("unknown");
    let cases = [
        (
            "[watchdog]\nstate_dri = \"x\"\n",
            "unknown key `state_dri` (did you mean `state_dir`?)",
        ),
        (
            "[defaults]\nintervall = \"5s\"\n",
            "unknown key `intervall` (did you mean `interval`?)",
        ),
        (
            "[[probe]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\nfail_afterr = 2\n",
            "unknown key `fail_afterr`",
        ),
        (
            "[[rule]]\nprobe = \"a\"\nwhen = \"down\"\ndo = []\nbugdet = \"1 per 1m\"\n",
            "unknown key `bugdet` (did you mean `budget`?)",
        ),
        (
            "[action.x]\nkind = \"command\"\ncommand = [\"/bin/true\"]\ntimeout = \"1s\"\nretries = 3\n",
            "unknown key `retries`",
        ),
        (
            "[probes]\nname = \"a\"\n",
            "unknown section `probes` (did you mean `probe`?)",
        ),
    ];
    for (text, want) in cases {
        let path = dir.write("c.toml", text);
        let (code, _, stderr) = watchdog(&["validate", "-c", path.to_str().unwrap()]);
        assert_eq!(code, 78, "{text}");
        assert!(
            stderr.contains(want),
            "`{want}` missing for:\n{text}\n---\n{stderr}"
        );
    }
}

#[test]
fn shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/watchdog.toml");
    let (code, stdout, stderr) = watchdog(&["validate", "-c", path]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("valid: 2 probes, 3 rules, 2 actions (2 files)"),
        "{stdout}"
    );
}

#[test]
fn world_writable_config_is_a_warning_not_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("perm");
    let path = dir.write(
        "c.toml",
        "[[probe]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n",
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, stderr) = watchdog(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("writable by group or others"), "{stderr}");
}

#[test]
fn unreadable_config_and_syntax_errors_exit_78() {
    let dir = TempDir::new("syntax");
    let (code, _, stderr) = watchdog(&[
        "validate",
        "-c",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 78);
    assert!(stderr.contains("cannot read config file"), "{stderr}");

    let path = dir.write("c.toml", "[[probe]]\nname = \"a\nkind = \"tcp\"\n");
    let (code, _, stderr) = watchdog(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 78);
    assert!(
        stderr.contains(&format!("{}:2:", path.display())),
        "{stderr}"
    );
}

#[test]
fn help_has_examples_for_every_verb() {
    for verb in ["run", "check", "validate"] {
        let (code, stdout, _) = watchdog(&[verb, "--help"]);
        assert_eq!(code, 0);
        assert!(
            stdout.contains("Example"),
            "{verb} --help has no example:\n{stdout}"
        );
    }
}

const ESCALATION: &str = r#"[[probe]]
name = "db"
kind = "tcp"
address = "127.0.0.1:5432"
depends_on = ["app"]

[[probe]]
name = "app"
kind = "tcp"
address = "127.0.0.1:8080"
depends_on = ["db", "cache", "app"]

[[rule]]
probe = "app"
when = "up"
escalate = ["restart", ["drain", "page"]]

[[rule]]
probe = "app"
when = "down"
do = ["restart"]
escalate = ["restart"]

[[rule]]
probe = "app"
when = "down"
escalate = ["page", "restart", []]
backoff = "10s"
backoff_max = "5s"

[[rule]]
probe = "db"
when = "down"
do = ["page"]
backoff_reset = "1h"

[action.restart]
kind = "command"
command = ["/bin/true"]

[action.drain]
kind = "command"
command = ["/bin/true"]

[action.page]
kind = "webhook"
url = "http://127.0.0.1:9/"
"#;

#[test]
fn ladders_backoff_and_dependencies_are_checked() {
    let dir = TempDir::new("escalation");
    let path = dir.write("c.toml", ESCALATION);
    let (code, _, stderr) = watchdog(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 78, "{stderr}");
    let m = path.display().to_string();
    let expected = [
        format!("{m}:5:15: probe \"db\": `depends_on` makes a cycle: db -> app -> db"),
        format!("{m}:11:15: probe \"app\": `depends_on` makes a cycle: app -> db -> app"),
        format!("{m}:11:21: probe \"app\": `depends_on`: no probe is named \"cache\""),
        format!("{m}:11:30: probe \"app\": a probe cannot depend on itself"),
        format!(
            "{m}:15:8: rule for probe \"app\": `escalate` needs `when = \"down\"`: `when = \"up\"` fires once per incident"
        ),
        format!(
            "{m}:21:6: rule for probe \"app\": set `do` (every action each time the rule fires) or `escalate`"
        ),
        format!("{m}:27:32: rule for probe \"app\": an empty step: name at least one action"),
        format!(
            "{m}:29:15: rule for probe \"app\": `backoff_max` (5s) is shorter than `backoff` (10s)"
        ),
        format!("{m}:35:17: rule for probe \"db\": `backoff_reset` needs `backoff`"),
    ];
    for want in &expected {
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(want.as_str())),
            "missing `{want}` in:\n{stderr}"
        );
    }
}

#[test]
fn a_ladder_step_that_only_pages_before_the_end_is_a_warning() {
    let dir = TempDir::new("ladder-warning");
    let text = ESCALATION
        .split("[[rule]]")
        .next()
        .unwrap()
        .replace(", \"cache\", \"app\"", "")
        .replace("depends_on = [\"app\"]\n", "")
        + r#"[[rule]]
probe = "app"
when = "down"
escalate = ["restart", "page", ["drain", "page"]]

[action.restart]
kind = "command"
command = ["/bin/true"]

[action.drain]
kind = "command"
command = ["/bin/true"]

[action.page]
kind = "webhook"
url = "http://127.0.0.1:9/"
"#;
    let path = dir.write("c.toml", &text);
    let (code, stdout, stderr) = watchdog(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid: 2 probes, 1 rules"), "{stdout}");
    assert!(
        stderr.contains("step 2 only pages, so the ladder stops there"),
        "{stderr}"
    );
}

/// `kind = "systemd"` and the signal action's `process_group`: every bad value at once, each at
/// its line and column, keys of other kinds rejected.
#[test]
fn systemd_and_signal_action_problems_are_each_reported() {
    let dir = TempDir::new("validate-systemd");
    let text = r#"[[probe]]
name = "web"
kind = "tcp"
address = "127.0.0.1:1"

[[rule]]
probe = "web"
when = "down"
do = ["a", "b", "c", "d", "e"]

[action.a]
kind = "systemd"
unit = "apache2"
operation = "restrat"

[action.b]
kind = "systemd"
unit = "apache2.service"
signal = "KILL"
bus = "session"

[action.c]
kind = "systemd"
unit = "apache2.service"
pidfile = "/run/apache2.pid"
process_group = true

[action.d]
kind = "command"
command = ["/bin/true"]
unit = "x.service"

[action.e]
kind = "systmd"
"#;
    let path = dir.write("c.toml", text);
    let p = path.display().to_string();
    let (code, _, stderr) = watchdog(&["validate", "-c", &p]);
    assert_eq!(code, 78, "{stderr}");
    for want in [
        format!(
            "{p}:13:8: action \"a\": `unit` \"apache2\" has no unit type suffix (did you mean \"apache2.service\"?)"
        ),
        format!(
            "{p}:14:13: action \"a\": unknown `operation` \"restrat\" (did you mean \"restart\"?)"
        ),
        format!("{p}:19:10: action \"b\": `signal` applies only to operation = \"kill\""),
        format!("{p}:20:7: action \"b\": `bus` \"session\" is neither \"system\" nor \"user\""),
        format!("{p}:25:11: action \"c\": `pidfile` does not apply to kind \"systemd\""),
        format!("{p}:26:17: action \"c\": `process_group` does not apply to kind \"systemd\""),
        format!("{p}:31:8: action \"d\": `unit` does not apply to kind \"command\""),
        format!(
            "{p}:34:8: action \"e\": unknown action kind \"systmd\" (did you mean \"systemd\"?)"
        ),
    ] {
        assert!(stderr.contains(&want), "missing: {want}\n---\n{stderr}");
    }

    // And a good one passes, with every key.
    let good = text.split("[action.a]").next().unwrap().replace(
        "do = [\"a\", \"b\", \"c\", \"d\", \"e\"]",
        "do = [\"kill-apache\", \"stop-group\"]",
    ) + "[action.kill-apache]\nkind = \"systemd\"\nunit = \"apache2.service\"\noperation = \"kill\"\n\
         signal = \"SIGKILL\"\nbus = \"user\"\ntimeout = \"10s\"\n\n\
         [action.stop-group]\nkind = \"signal\"\npidfile = \"/run/apache2.pid\"\nprocess_group = true\n";
    let path = dir.write("good.toml", &good);
    let (code, _, stderr) = watchdog(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{good}\n---\n{stderr}");
}

#[test]
fn start_grid_is_a_duration_and_zero_turns_it_off() {
    let dir = TempDir::new("start-grid");
    let probe = "\n[[probe]]\nname = \"ssh\"\nkind = \"tcp\"\naddress = \"127.0.0.1:22\"\n";
    let bad = dir.write(
        "bad.toml",
        &format!("[watchdog]\nstate_dir = \"state\"\nstart_grid = \"often\"\n{probe}"),
    );
    let (code, _, stderr) = watchdog(&["validate", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 78, "{stderr}");
    let want = format!(
        "{}:3:14: [watchdog]: `start_grid`: `often` is not a duration",
        bad.display()
    );
    assert!(
        stderr.lines().any(|l| l.trim_start().starts_with(&want)),
        "missing `{want}` in:\n{stderr}"
    );
    for grid in ["0s", "100ms", "1s"] {
        let ok = dir.write(
            "ok.toml",
            &format!("[watchdog]\nstate_dir = \"state\"\nstart_grid = \"{grid}\"\n{probe}"),
        );
        let (code, _, stderr) = watchdog(&["validate", "-c", ok.to_str().unwrap()]);
        assert_eq!(code, 0, "start_grid = {grid}: {stderr}");
    }
}
