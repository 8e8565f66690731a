//! Conformance of the dtab grammar and printer with Finagle's: what parses,
//! what it parses into, what is rejected and how the error reads, and the
//! canonical printed form.

use sidetrack::dtab::{Dentry, Dtab, NameTree, Path, Prefix, PrefixElem, Weighted};

fn path(s: &str) -> Path {
    Path::read(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn leaf(s: &str) -> NameTree<Path> {
    NameTree::Leaf(path(s))
}

fn tree(s: &str) -> NameTree<Path> {
    NameTree::read(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn w(weight: f64, t: NameTree<Path>) -> Weighted<Path> {
    Weighted::new(weight, t)
}

fn show(s: &str) -> String {
    Dtab::parse(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .to_string()
}

fn dtab_err(s: &str) -> String {
    Dtab::parse(s).expect_err(s).to_string()
}

#[test]
fn paths() {
    assert_eq!(path("/"), Path::empty());
    assert_eq!(path("  /foo/bar  "), Path::from_elems(["foo", "bar"]));
    assert_eq!(path("/\\x66\\x6f\\x6F"), Path::from_elems(["foo"]));
    assert_eq!(path("/a_:.#$%-Z9"), Path::from_elems(["a_:.#$%-Z9"]));
    for bad in [
        "",
        "/foo/bar/",
        "/{}",
        "/\\?",
        "/\\x?",
        "/\\x0?",
        "//",
        "foo",
        "/a b",
        "/\\X41",
    ] {
        assert!(Path::read(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn escapes_make_arbitrary_bytes_and_print_whole_labels_escaped() {
    let p = path("/a\\x2fb/c\\x20/\\x41BC");
    assert_eq!(p, Path::from_elems([&b"a/b"[..], b"c ", b"ABC"]));
    // A label with any byte outside the label set prints all its bytes escaped;
    // a label of only label bytes prints plainly, however it was written.
    assert_eq!(p.to_string(), "/\\x61\\x2f\\x62/\\x63\\x20/ABC");
    assert_eq!(path(&p.to_string()), p);
    assert_eq!(path("/\\xff\\x00").to_string(), "/\\xff\\x00");
}

#[test]
fn trees_parse_with_alternation_loosest() {
    assert_eq!(
        tree("! | ~ | $"),
        NameTree::Alt(vec![NameTree::Fail, NameTree::Neg, NameTree::Empty])
    );
    assert_eq!(tree("/foo/bar"), leaf("/foo/bar"));
    assert_eq!(
        tree("  /foo & /bar  "),
        NameTree::Union(vec![w(1.0, leaf("/foo")), w(1.0, leaf("/bar"))])
    );
    assert_eq!(
        tree("  /foo | /bar  "),
        NameTree::Alt(vec![leaf("/foo"), leaf("/bar")])
    );
    assert_eq!(
        tree("/foo & /bar | /bar & /baz"),
        NameTree::Alt(vec![
            NameTree::Union(vec![w(1.0, leaf("/foo")), w(1.0, leaf("/bar"))]),
            NameTree::Union(vec![w(1.0, leaf("/bar")), w(1.0, leaf("/baz"))]),
        ])
    );
    assert_eq!(
        tree("1 * /foo & 2 * /bar | .5 * /bar & .5 * /baz"),
        NameTree::Alt(vec![
            NameTree::Union(vec![w(1.0, leaf("/foo")), w(2.0, leaf("/bar"))]),
            NameTree::Union(vec![w(0.5, leaf("/bar")), w(0.5, leaf("/baz"))]),
        ])
    );
    assert_eq!(
        tree("/a & (/b | /c)"),
        NameTree::Union(vec![
            w(1.0, leaf("/a")),
            w(1.0, NameTree::Alt(vec![leaf("/b"), leaf("/c")]))
        ])
    );
    assert_eq!(tree("((/a))"), leaf("/a"));
    assert_eq!(
        tree("2*/a&3.*/b"),
        NameTree::Union(vec![w(2.0, leaf("/a")), w(3.0, leaf("/b"))])
    );
    // A weight on a lone branch is dropped with the union.
    assert_eq!(tree("3 * /a"), leaf("/a"));
    assert_eq!(tree("/"), leaf("/"));
}

#[test]
fn malformed_trees_are_rejected() {
    for bad in [
        "",
        "#",
        "/foo &",
        "/foo |",
        "/foo & 0.1.2 * /bar",
        "/foo & . * /bar",
        "2 /a",
        "* /a",
        "(/a",
        "/a)",
        "()",
        "/a /b",
        "&/a",
        "-1 * /a",
        "1e3 * /a",
        "/a/",
    ] {
        assert!(NameTree::read(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn dentries_and_wildcard_prefixes() {
    assert_eq!(
        Dentry::read("/=>!").unwrap(),
        Dentry::new(Prefix::default(), NameTree::Fail)
    );
    assert_eq!(
        Dentry::read("/ => !").unwrap(),
        Dentry::new(Prefix::default(), NameTree::Fail)
    );
    let d = Dentry::read("/foo/*/bar => !").unwrap();
    assert_eq!(
        d.prefix.elems(),
        &[
            PrefixElem::Label(b"foo"[..].into()),
            PrefixElem::Any,
            PrefixElem::Label(b"bar"[..].into())
        ]
    );
    // `*` is a whole element, never part of a label; `=>` has no space inside.
    for bad in [
        "/foo/*bar/baz => !",
        "/foo*/bar => !",
        "/&!",
        "/a = > /b",
        "/a =>",
        "/a/ => /b",
        "/a",
    ] {
        assert!(Dentry::read(bad).is_err(), "{bad:?} parsed");
    }
    // An escaped `*` is a label, not the wildcard, and prints escaped.
    let escaped = Dentry::read("/\\x2a => /a").unwrap();
    assert_eq!(
        escaped.prefix.elems(),
        &[PrefixElem::Label(b"*"[..].into())]
    );
    assert_eq!(escaped.to_string(), "/\\x2a=>/a");
}

#[test]
fn dtabs_separators_and_trailing_semicolon() {
    assert!(Dtab::parse("").unwrap().is_empty());
    assert!(Dtab::parse("  \n\t ").unwrap().is_empty());
    assert_eq!(Dtab::parse("  /=>!  ").unwrap().len(), 1);
    assert_eq!(Dtab::parse("/=>!;").unwrap().len(), 1);
    assert_eq!(Dtab::parse("/b => /c;\n/a => /b;\n").unwrap().len(), 2);
    let d = Dtab::parse("/=>!;/foo=>/bar").unwrap();
    assert_eq!(
        d.dentries()[1],
        Dentry::new(Prefix::read("/foo").unwrap(), leaf("/bar"))
    );
    for bad in [
        ";",
        "/a=>/b;;",
        ";/a=>/b",
        "/a=>/b;;/c=>/d",
        "/a=>/b /c=>/d",
    ] {
        assert!(Dtab::parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn comments_run_to_end_of_line_where_whitespace_may_stand() {
    let d = Dtab::parse(
        "
# a comment
      /#foo => /biz  # another comment
             | ( /bliz & # yet another comment
                 /bluth ) # duh bluths
             ; #finally
      #/ignore=>/me;
    ",
    )
    .unwrap();
    assert_eq!(
        d.dentries(),
        &[Dentry::new(
            Prefix::read("/#foo").unwrap(),
            NameTree::Alt(vec![
                leaf("/biz"),
                NameTree::Union(vec![w(1.0, leaf("/bliz")), w(1.0, leaf("/bluth"))]),
            ])
        )]
    );
    // Inside a path `#` is a label character; after whitespace it starts a comment.
    assert_eq!(tree("/a/#b"), leaf("/a/#b"));
    assert_eq!(tree("/ #b"), leaf("/"));
    assert_eq!(show("/a=>/b#c"), "/a=>/b#c");
    assert_eq!(show("/a=>/b #c"), "/a=>/b");
    assert!(
        Dtab::parse("/a=>#/b").is_err(),
        "a comment eats the rest of its line"
    );
}

#[test]
fn canonical_printing() {
    let cases = [
        ("/a => /b ; /c=>/d", "/a=>/b;/c=>/d"),
        ("/a=>/b|/c", "/a=>/b | /c"),
        ("/a=>/b&/c", "/a=>/b & /c"),
        ("/a=>0.8*/b & 0.2*/c", "/a=>0.80*/b & 0.20*/c"),
        ("/a=>1.0*/b & 1*/c", "/a=>/b & /c"),
        ("/a=>.5*/b&/c", "/a=>0.50*/b & /c"),
        ("/a=>3*/b & .25*/c", "/a=>3.00*/b & 0.25*/c"),
        ("/a=>(/b | /c) & /d", "/a=>(/b | /c) & /d"),
        ("/a=>(/b & /c) | /d", "/a=>/b & /c | /d"),
        ("/a=>/b & (/c & /d)", "/a=>/b & (/c & /d)"),
        ("/a=>(/b | /c) | /d", "/a=>(/b | /c) | /d"),
        ("/a=>((/b))", "/a=>/b"),
        ("/a=>2*(/b|/c) & ~", "/a=>2.00*(/b | /c) & ~"),
        ("/a=>! | ~ | $", "/a=>! | ~ | $"),
        ("/=>/", "/=>/"),
        ("/*/b/* => /c", "/*/b/*=>/c"),
        ("/a=>/b;", "/a=>/b"),
        ("", ""),
    ];
    for (input, want) in cases {
        assert_eq!(show(input), want, "printing {input:?}");
        assert_eq!(show(want), want, "{want:?} is a fixpoint");
        assert_eq!(
            Dtab::parse(want).unwrap(),
            Dtab::parse(input).unwrap(),
            "{input:?} round-trips"
        );
    }
}

#[test]
fn weights_print_with_two_decimals_rounding_half_up() {
    assert_eq!(show("/a=>.125*/b & /c"), "/a=>0.13*/b & /c");
    assert_eq!(show("/a=>0.994*/b & /c"), "/a=>0.99*/b & /c");
    assert_eq!(show("/a=>9.995*/b & /c"), "/a=>10.00*/b & /c");
    assert_eq!(show("/a=>0*/b & /c"), "/a=>0.00*/b & /c");
    // As in Finagle, only a weight of exactly 1 goes unprinted; 0.999 prints
    // as 1.00 and so reads back as the default.
    assert_eq!(show("/a=>.999*/b & /c"), "/a=>1.00*/b & /c");
    assert_eq!(show("/a=>1.00*/b & /c"), "/a=>/b & /c");
}

#[test]
fn errors_bracket_the_offending_character() {
    assert_eq!(
        dtab_err("/foo^bar"),
        "'=' expected but '^' found at '/foo[^]bar'"
    );
    assert_eq!(
        Path::read("/foo/bar/").unwrap_err().to_string(),
        "label char expected but end of input found at '/foo/bar/[]'"
    );
    assert_eq!(
        dtab_err("/a => /b /c"),
        "end of input expected but '/' found at '/a => /b [/]c'"
    );
    assert_eq!(
        dtab_err("/a = > /b"),
        "'>' expected but ' ' found at '/a =[ ]> /b'"
    );
    assert_eq!(
        dtab_err("/a=>/b & 0.1.2*/c"),
        "number char expected but '.' found at '/a=>/b & 0.1[.]2*/c'"
    );
    assert_eq!(
        dtab_err("/a=>/\\x4g"),
        "hex char expected but 'g' found at '/a=>/\\x4[g]'"
    );
    assert_eq!(
        dtab_err("/a=>"),
        "simple expected but end of input found at '/a=>[]'"
    );
    let e = Dtab::parse("/a=>/b;;").unwrap_err();
    assert_eq!(e.offset(), 7);
    assert_eq!(e.to_string(), "'/' expected but ';' found at '/a=>/b;[;]'");
    // Non-ASCII input is shown by characters.
    assert_eq!(
        dtab_err("/é=>/b"),
        "'=' expected but 'é' found at '/[é]=>/b'"
    );
}

#[test]
fn nesting_is_bounded() {
    let ok = format!("{}/a{}", "(".repeat(100), ")".repeat(100));
    assert_eq!(tree(&ok), leaf("/a"));
    let deep = format!("{}/a{}", "(".repeat(101), ")".repeat(101));
    assert!(NameTree::read(&deep).is_err());
    // Far deeper input is an error, not a stack overflow.
    assert!(NameTree::read(&"(".repeat(1_000_000)).is_err());
}

#[test]
fn huge_weights_are_rejected_rather_than_infinite() {
    let digits = "9".repeat(400);
    assert!(NameTree::read(&format!("{digits} * /a & /b")).is_err());
    assert_eq!(tree("1000000 * /a & /b").to_string(), "1000000.00*/a & /b");
}
