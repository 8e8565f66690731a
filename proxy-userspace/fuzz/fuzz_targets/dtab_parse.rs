//! Fuzzes the dtab parser and printer, and the trie against the scan.
//!
//! Input: a path on the first line, a dtab after it. Whatever parses must
//! print to a form that parses, and printing settles after one round trip
//! (a weight such as 0.999 prints as `1.00*`, as Finagle prints it, and
//! reads back as the default weight, printed without a prefix); the trie
//! must find the same matches as the scan and bind alike.
//!
//! `cargo xtask fuzz --only dtab_parse` (docs/fuzz.md).

#![no_main]

use libfuzzer_sys::fuzz_target;

use sidetrack_fuzz::dtab::{CompiledDtab, Dtab, NameTree, Namers, Path, bind, bind_reference};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));

    if let Ok(tree) = NameTree::read(text) {
        let once = NameTree::read(&tree.to_string())
            .expect("printed trees parse")
            .to_string();
        let twice =
            NameTree::read(&once).unwrap_or_else(|e| panic!("{once:?} does not parse: {e}"));
        assert_eq!(twice.to_string(), once);
    }
    let Ok(dtab) = Dtab::parse(rest) else { return };
    let once = Dtab::parse(&dtab.to_string()).expect("printed dtabs parse");
    assert_eq!(once.len(), dtab.len());
    let shown = once.to_string();
    let twice = Dtab::parse(&shown).unwrap_or_else(|e| panic!("{shown:?} does not parse: {e}"));
    assert_eq!(twice, once);
    assert_eq!(twice.to_string(), shown);

    let Ok(path) = Path::read(first) else { return };
    assert_eq!(Path::read(&path.to_string()).ok(), Some(path.clone()));
    let compiled = CompiledDtab::new(&dtab);
    let empty = Dtab::empty();
    assert_eq!(
        compiled.matching_indices(&empty, &path),
        dtab.matching_indices(&path)
    );
    let namers = Namers::default();
    assert_eq!(
        bind(&compiled, &empty, &path, &namers),
        bind_reference(&dtab, &empty, &path, &namers)
    );
});
