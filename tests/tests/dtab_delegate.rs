//! Explanation trees: the JSON shape of Linkerd 1's `/delegator.json`,
//! checked against the responses Linkerd's own tests expect, and agreement
//! between the trie and the reference scan.

use std::sync::Arc;

use sidetrack::dtab::{
    CompiledDtab, DelegateTree, Dtab, NameTree, Namer, NamerBound, NamerError, NamerSet, Namers,
    Path, delegate, delegate_reference,
};

/// Fails every lookup, like the error namer in Linkerd's tests.
struct ErrorNamer;

impl Namer for ErrorNamer {
    fn lookup(&self, p: &Path) -> Result<NameTree<NamerBound>, NamerError> {
        Err(NamerError::new(format!("error naming /#/error{p}")))
    }
}

fn explain(dtab: &str, local: &str, path: &str, namers: &dyn NamerSet) -> DelegateTree {
    let base = Dtab::parse(dtab).unwrap();
    let local = Dtab::parse(local).unwrap();
    let path = Path::read(path).unwrap();
    let tree = delegate(&CompiledDtab::new(&base), &local, &path, namers);
    assert_eq!(
        tree,
        delegate_reference(&base, &local, &path, namers),
        "trie and scan disagree"
    );
    tree
}

fn json(dtab: &str, path: &str) -> String {
    let namers = Namers::default().with("error", Arc::new(ErrorNamer));
    serde_json::to_string(&explain(dtab, "", path, &namers)).unwrap()
}

const DTAB: &str = "
    /beh => /#/error ;
    /bah/humbug => /$/inet/127.1/8080 ;
    /foo => /bah | /beh | /$/fail ;
    /foo => /bar ;
    /boo => /foo ;
    /meh => /heh ;
    /neg => ~ ;
";

#[test]
fn every_branch_is_shown_as_linkerd_shows_it() {
    let want = concat!(
        r#"{"type":"delegate","path":"/boo/humbug","delegate":{"#,
        r#""type":"alt","path":"/foo/humbug","dentry":{"prefix":"/boo","dst":"/foo"},"alt":["#,
        r#"{"type":"neg","path":"/bar/humbug","dentry":{"prefix":"/foo","dst":"/bar"}},"#,
        r#"{"type":"delegate","path":"/bah/humbug","#,
        r#""dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"},"delegate":{"#,
        r#""type":"leaf","path":"/$/inet/127.1/8080","dentry":{"prefix":"/bah/humbug","#,
        r#""dst":"/$/inet/127.1/8080"},"#,
        r#""bound":{"addr":{"type":"bound","addrs":[{"ip":"127.0.0.1","port":8080,"meta":{}}],"meta":{}},"#,
        r#""id":"/$/inet/127.1/8080","path":"/"}}},"#,
        r#"{"type":"delegate","path":"/beh/humbug","#,
        r#""dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"},"delegate":{"#,
        r#""type":"exception","path":"/#/error/humbug","dentry":{"prefix":"/beh","dst":"/#/error"},"#,
        r#""message":"error naming /#/error/humbug"}},"#,
        r#"{"type":"fail","path":"/$/fail/humbug","dentry":{"prefix":"/foo","dst":"/bah | /beh | /$/fail"}}]}}"#,
    );
    assert_eq!(json(DTAB, "/boo/humbug"), want);
}

#[test]
fn neg_without_a_match_and_an_explicit_neg() {
    assert_eq!(
        json(DTAB, "/meh"),
        r#"{"type":"delegate","path":"/meh","delegate":{"type":"neg","path":"/heh","dentry":{"prefix":"/meh","dst":"/heh"}}}"#
    );
    assert_eq!(
        json(DTAB, "/neg"),
        r#"{"type":"delegate","path":"/neg","delegate":{"type":"neg","path":"~","dentry":{"prefix":"/neg","dst":"~"}}}"#
    );
    assert_eq!(
        json(DTAB, "/nothing"),
        r#"{"type":"neg","path":"/nothing"}"#
    );
}

#[test]
fn unions_show_weights_and_failures_inside_them_become_exceptions() {
    let tree = json(
        "/s => 3 * /$/inet/10.0.0.1/80 & /loop & !; /loop => /loop",
        "/s",
    );
    let v: serde_json::Value = serde_json::from_str(&tree).unwrap();
    assert_eq!(v["type"], "union");
    assert_eq!(v["path"], "/s");
    let branches = v["union"].as_array().unwrap();
    assert_eq!(branches.len(), 3);
    assert_eq!(branches[0]["weight"], 3.0);
    assert_eq!(branches[0]["tree"]["type"], "leaf");
    assert_eq!(branches[0]["tree"]["bound"]["id"], "/$/inet/10.0.0.1/80");
    assert_eq!(branches[1]["weight"], 1.0);
    assert_eq!(branches[1]["tree"]["type"], "exception");
    assert!(
        branches[1]["tree"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum depth of 100")
    );
    assert_eq!(branches[2]["tree"]["type"], "fail");
    assert_eq!(branches[2]["tree"]["path"], "!");
}

#[test]
fn an_empty_result_and_a_loop_at_the_root() {
    assert_eq!(
        json("/s => /$/nil", "/s/x"),
        r#"{"type":"delegate","path":"/s/x","delegate":{"type":"empty","path":"/$/nil/x","dentry":{"prefix":"/s","dst":"/$/nil"}}}"#
    );
    let v: serde_json::Value = serde_json::from_str(&json("/a => /b; /b => /a", "/a")).unwrap();
    assert_eq!(v["type"], "exception");
    assert_eq!(v["path"], "/a");
    assert!(v["message"].as_str().unwrap().contains("100"));
}

#[test]
fn alternatives_are_all_explored_even_after_an_answer() {
    // Binding stops at the first answer; the explanation shows the rest too.
    let v: serde_json::Value = serde_json::from_str(&json(
        "/s => /$/inet/10.0.0.2/80; /s => /$/inet/10.0.0.1/80 | /$/nil",
        "/s",
    ))
    .unwrap();
    assert_eq!(v["type"], "alt");
    let alts = v["alt"].as_array().unwrap();
    let kinds: Vec<&str> = alts.iter().map(|a| a["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["leaf", "empty", "leaf"]);
    assert_eq!(alts[0]["bound"]["id"], "/$/inet/10.0.0.1/80");
    assert_eq!(alts[2]["bound"]["id"], "/$/inet/10.0.0.2/80");
}

#[test]
fn local_dtab_entries_are_explained_first() {
    let namers = Namers::default();
    let tree = explain(
        "/s => /$/inet/10.0.0.1/80",
        "/s => /$/inet/10.0.0.2/80",
        "/s",
        &namers,
    );
    let v = serde_json::to_value(&tree).unwrap();
    assert_eq!(v["alt"][0]["bound"]["id"], "/$/inet/10.0.0.2/80");
    assert_eq!(v["alt"][1]["bound"]["id"], "/$/inet/10.0.0.1/80");
}
