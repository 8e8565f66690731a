//! The `sidetrack dtab` contract that tools rely on (docs/ARCHITECTURE.md):
//! exact stdout JSON, errors on stderr with exit status 2. Checked in
//! process through `DtabCommand::execute`, and through the built binary.

use std::process::Command;

use sidetrack::cli::dtab::DtabCommand;

fn show(dtab: &str) -> Result<String, String> {
    DtabCommand::Show { dtab: dtab.into() }.execute()
}

fn eval(tree: &str) -> Result<String, String> {
    DtabCommand::Eval { tree: tree.into() }.execute()
}

fn resolve(dtab: &str, path: &str) -> Result<String, String> {
    DtabCommand::Resolve {
        dtab: dtab.into(),
        path: path.into(),
    }
    .execute()
}

fn delegate(dtab: &str, path: &str) -> Result<String, String> {
    DtabCommand::Delegate {
        dtab: dtab.into(),
        path: path.into(),
    }
    .execute()
}

#[test]
fn show_prints_the_canonical_form() {
    assert_eq!(show("/a => /b ;\n /c=>/d").unwrap(), "/a=>/b;/c=>/d");
    assert_eq!(
        show("/a => 0.8 * /b & .2*/c | ~").unwrap(),
        "/a=>0.80*/b & 0.20*/c | ~"
    );
    assert_eq!(show("").unwrap(), "");
    let err = show("/foo^bar").unwrap_err();
    assert!(err.contains("'/foo[^]bar'"), "{err}");
}

#[test]
fn eval_prints_sorted_distinct_leaves_or_neg_or_fail() {
    assert_eq!(
        eval("/b & /a & /b | /c").unwrap(),
        r#"{"result":"leaves","paths":["/a","/b"]}"#
    );
    assert_eq!(eval("$").unwrap(), r#"{"result":"leaves","paths":[]}"#);
    assert_eq!(eval("~").unwrap(), r#"{"result":"neg"}"#);
    assert_eq!(eval("~ | ~").unwrap(), r#"{"result":"neg"}"#);
    assert_eq!(eval("! | /a").unwrap(), r#"{"result":"fail"}"#);
    assert_eq!(
        eval("~ | /a").unwrap(),
        r#"{"result":"leaves","paths":["/a"]}"#
    );
    assert_eq!(
        eval("! & /a").unwrap(),
        r#"{"result":"leaves","paths":["/a"]}"#
    );
    assert_eq!(eval("! & ~").unwrap(), r#"{"result":"neg"}"#);
    assert_eq!(eval("$ | /a").unwrap(), r#"{"result":"leaves","paths":[]}"#);
    assert_eq!(
        eval("$ & /a").unwrap(),
        r#"{"result":"leaves","paths":["/a"]}"#
    );
    assert!(eval("/a &").is_err());
}

#[test]
fn resolve_prints_bound_addresses_with_shares() {
    assert_eq!(
        resolve("/a/b/c => /$/inet/127.0.0.1/8080", "/a/b/c/e/f").unwrap(),
        r#"{"result":"bound","leaves":[{"id":"/$/inet/127.0.0.1/8080","addr":"127.0.0.1:8080","residual":"/e/f","weight":1.0}]}"#
    );
    assert_eq!(
        resolve(
            "/s => 3 * /$/inet/10.0.0.1/1 & /$/inet/10.0.0.2/2 & ~",
            "/s"
        )
        .unwrap(),
        concat!(
            r#"{"result":"bound","leaves":["#,
            r#"{"id":"/$/inet/10.0.0.1/1","addr":"10.0.0.1:1","residual":"/","weight":0.75},"#,
            r#"{"id":"/$/inet/10.0.0.2/2","addr":"10.0.0.2:2","residual":"/","weight":0.25}]}"#
        )
    );
    assert_eq!(resolve("/s => ~", "/s").unwrap(), r#"{"result":"neg"}"#);
    assert_eq!(resolve("", "/s").unwrap(), r#"{"result":"neg"}"#);
    assert_eq!(resolve("/s => !", "/s").unwrap(), r#"{"result":"fail"}"#);
    assert_eq!(
        resolve("/s => /$/fail", "/s").unwrap(),
        r#"{"result":"fail"}"#
    );
    assert_eq!(resolve("/s => $", "/s").unwrap(), r#"{"result":"empty"}"#);
    assert_eq!(
        resolve("/s => /$/nil", "/s").unwrap(),
        r#"{"result":"empty"}"#
    );
    assert_eq!(
        resolve("/s => $ & $", "/s").unwrap(),
        r#"{"result":"empty"}"#
    );
    // Offline there are no configured namers.
    assert_eq!(
        resolve("/s => /#/io.l5d.fs/web", "/s").unwrap(),
        r#"{"result":"neg"}"#
    );
    let err = resolve("/a => /b; /b => /a", "/a").unwrap_err();
    assert!(err.contains("100"), "{err}");
    assert!(resolve("/a => ", "/a").is_err());
    assert!(resolve("/a => /b", "a").is_err());
}

#[test]
fn delegate_prints_the_explanation_tree() {
    assert_eq!(
        delegate("/s => /$/inet/127.0.0.1/80", "/s/x").unwrap(),
        concat!(
            r#"{"type":"delegate","path":"/s/x","delegate":{"type":"leaf","path":"/$/inet/127.0.0.1/80/x","#,
            r#""dentry":{"prefix":"/s","dst":"/$/inet/127.0.0.1/80"},"bound":{"addr":{"type":"bound","#,
            r#""addrs":[{"ip":"127.0.0.1","port":80,"meta":{}}],"meta":{}},"id":"/$/inet/127.0.0.1/80","path":"/x"}}}"#
        )
    );
    assert!(delegate("/a =>", "/a").is_err());
}

fn run(args: &[&str]) -> (i32, String, String) {
    // The binary this package builds for its integration tests, so it is fresh.
    let out = Command::new(sidetrack_tests::proxy::binary())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_binary_keeps_the_contract() {
    assert_eq!(
        run(&["dtab", "show", "/a=>/b ; /c=>/d"]),
        (0, "/a=>/b;/c=>/d\n".into(), String::new())
    );
    let (code, out, err) = run(&["dtab", "show", "/foo^bar"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("'/foo[^]bar'"), "{err}");
    assert_eq!(
        run(&["dtab", "eval", "/b|/a"]).1,
        "{\"result\":\"leaves\",\"paths\":[\"/b\"]}\n"
    );
    let (code, out, _) = run(&[
        "dtab",
        "resolve",
        "--dtab",
        "/a/b/c => /$/inet/127.0.0.1/8080",
        "/a/b/c/e/f",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "{\"result\":\"bound\",\"leaves\":[{\"id\":\"/$/inet/127.0.0.1/8080\",\"addr\":\"127.0.0.1:8080\",\"residual\":\"/e/f\",\"weight\":1.0}]}\n"
    );
    let (code, out, err) = run(&["dtab", "resolve", "--dtab", "/a=>/a", "/a"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("depth of 100"), "{err}");
    let (code, out, _) = run(&["dtab", "delegate", "--dtab", "/a=>/b", "/a"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("{\"type\":\"delegate\",\"path\":\"/a\""),
        "{out}"
    );
}
