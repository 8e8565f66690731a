//! The `/delegator` page in a real browser: headless Chromium loads it with
//! a path and a dtab in the query, the page asks `/delegator.json` and draws
//! the tree; the test reads the DOM Chromium ends with.

use sidetrack_tests::{browser::chromium_dom, proxy::Proxy};

#[test]
fn the_delegator_page_draws_every_branch() {
    let proxy = Proxy::start(&[
        "--dtab",
        "/svc => /host; /host/world => /$/inet/127.0.0.1/8081; /host/world => /$/fail",
    ]);
    // The override adds a union with a weighted branch; the base dtab's two
    // world entries make an alternation whose later entry (fail) comes first.
    let url = format!(
        "http://{}/delegator?path=/svc/world&dtab={}",
        proxy.admin, "/host/world%20=>%200.7%20*%20/$/inet/127.0.0.1/8082%20%26%200.3%20*%20/$/nil"
    );
    let dom = chromium_dom(&url);
    assert!(dom.contains("Sidetrack delegator"), "{dom}");
    // The base dtab is shown.
    assert!(
        dom.contains(
            "/svc=&gt;/host;/host/world=&gt;/$/inet/127.0.0.1/8081;/host/world=&gt;/$/fail"
        ),
        "{dom}"
    );
    // The tree: the union from the override, with its weights and both
    // leaves, and the base's alternatives.
    for needle in [
        r#"data-type="union""#,
        r#"data-type="leaf""#,
        r#"data-type="empty""#,
        r#"data-type="fail""#,
        "0.7 × ",
        "127.0.0.1:8082",
        "127.0.0.1:8081",
    ] {
        assert!(
            dom.contains(needle),
            "{needle} missing from the page:\n{dom}"
        );
    }
    assert!(
        !dom.contains(r#"id="error"></div>"#) || dom.contains(r#"<div id="error"></div>"#),
        "the page reported an error:\n{dom}"
    );
}
