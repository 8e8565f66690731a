//! The dtab parser: a hand-written recursive descent over the input, one
//! function per production, accepting exactly the language of Finagle's
//! dtab parser.
//!
//! ```text
//! dtab    ::= ws (dentry ws)? (';' ws (dentry ws)?)*       -- empty and trailing ';' allowed
//! dentry  ::= prefix ws '=>' tree                          -- no space inside '=>'
//! prefix  ::= ws '/' (elem ('/' elem)*)?                   -- elem: label or '*'
//! tree    ::= tree1 ws ('|' tree1 ws)*                     -- alternation, loosest
//! tree1   ::= weighted ws ('&' weighted ws)*               -- union
//! weighted::= ws (number ws '*' ws)? simple                -- number: [0-9.]+ with at most one '.', not "."
//! simple  ::= ws ( '(' tree ws ')' | path | '!' | '~' | '$' )
//! path    ::= ws '/' (label ('/' label)*)?                 -- a trailing '/' is an error
//! label   ::= ([0-9A-Za-z_:.#$%-] | '\x' hex hex)+
//! ws      ::= (whitespace | '#' to end of line)*
//! ```
//!
//! Errors say what was expected and show where, Finagle's way: the input with
//! the offending character bracketed (`'/foo[^]bar'`), or `[]` at its end.

use std::fmt;

use super::entry::{Dentry, Dtab};
use super::path::{Path, Prefix, PrefixElem, is_label_byte};
use super::tree::{DEFAULT_WEIGHT, NameTree, Weighted};

/// How deeply parentheses may nest. Finagle has no limit; ours keeps the
/// recursion of the parser and of everything that walks trees bounded.
pub const MAX_NESTING: usize = 100;

/// A syntax error, with the byte offset where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    offset: usize,
    message: String,
}

impl ParseError {
    /// Byte offset into the input of the character that was not expected.
    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

pub(crate) fn parse_path(s: &str) -> Result<Path, ParseError> {
    let mut p = Parser::new(s);
    let path = p.path()?;
    p.finish()?;
    Ok(path)
}

pub(crate) fn parse_prefix(s: &str) -> Result<Prefix, ParseError> {
    let mut p = Parser::new(s);
    let prefix = p.prefix()?;
    p.finish()?;
    Ok(prefix)
}

pub(crate) fn parse_tree(s: &str) -> Result<NameTree<Path>, ParseError> {
    let mut p = Parser::new(s);
    let tree = p.tree()?;
    p.finish()?;
    Ok(tree)
}

pub(crate) fn parse_dentry(s: &str) -> Result<Dentry, ParseError> {
    let mut p = Parser::new(s);
    let dentry = p.dentry()?;
    p.finish()?;
    Ok(dentry)
}

pub(crate) fn parse_dtab(s: &str) -> Result<Dtab, ParseError> {
    let mut p = Parser::new(s);
    let mut dentries = Vec::new();
    loop {
        p.skip_ws();
        if !p.at_end() {
            dentries.push(p.dentry()?);
            p.skip_ws();
        }
        if !p.maybe_eat(';') {
            break;
        }
    }
    p.finish()?;
    Ok(Dtab::new(dentries))
}

/// Java's `Character.isWhitespace`, which Finagle's parser uses: Unicode
/// space separators except the no-break ones, plus the ASCII controls
/// tab, newline, vertical tab, form feed, return and 0x1C-0x1F.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t'..='\r' | '\u{1c}'..='\u{1f}')
        || (c.is_whitespace() && !matches!(c, '\u{85}' | '\u{a0}' | '\u{2007}' | '\u{202f}'))
}

fn is_label_char(c: char) -> bool {
    c.is_ascii() && is_label_byte(c as u8)
}

fn is_label_start(c: Option<char>) -> bool {
    matches!(c, Some(c) if is_label_char(c) || c == '\\')
}

fn is_number_char(c: Option<char>) -> bool {
    matches!(c, Some(c) if c.is_ascii_digit() || c == '.')
}

struct Parser<'a> {
    s: &'a str,
    i: usize,
    nesting: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Parser<'a> {
        Parser {
            s,
            i: 0,
            nesting: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.i += c.len_utf8();
        }
    }

    fn maybe_eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn eat(&mut self, c: char) -> Result<(), ParseError> {
        if self.maybe_eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("'{c}'")))
        }
    }

    /// "X expected but Y found", Y being the character at the cursor.
    fn error(&self, expected: &str) -> ParseError {
        let found = match self.peek() {
            Some(c) => format!("'{c}'"),
            None => "end of input".to_string(),
        };
        self.error_found(expected, &found)
    }

    fn error_found(&self, expected: &str, found: &str) -> ParseError {
        let shown = match self.peek() {
            Some(c) => {
                let after = self.i + c.len_utf8();
                format!("{}[{c}]{}", &self.s[..self.i], &self.s[after..])
            }
            None => format!("{}[]", self.s),
        };
        ParseError {
            offset: self.i,
            message: format!("{expected} expected but {found} found at '{shown}'"),
        }
    }

    /// Whitespace and comments: `#` runs to the end of the line.
    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c == '#' {
                match self.s[self.i..].find('\n') {
                    Some(nl) => self.i += nl + 1,
                    None => self.i = self.s.len(),
                }
            } else if is_whitespace(c) {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn finish(&mut self) -> Result<(), ParseError> {
        self.skip_ws();
        if self.at_end() {
            Ok(())
        } else {
            Err(self.error("end of input"))
        }
    }

    fn hex(&mut self) -> Result<u8, ParseError> {
        match self.peek().and_then(|c| c.to_digit(16)) {
            Some(d) => {
                self.bump();
                Ok(d as u8)
            }
            None => Err(self.error("hex char")),
        }
    }

    fn label(&mut self) -> Result<Vec<u8>, ParseError> {
        let mut bytes = Vec::new();
        loop {
            match self.peek() {
                Some(c) if is_label_char(c) => {
                    self.bump();
                    bytes.push(c as u8);
                }
                Some('\\') => {
                    self.bump();
                    self.eat('x')?;
                    let hi = self.hex()?;
                    let lo = self.hex()?;
                    bytes.push(hi << 4 | lo);
                }
                _ => return Err(self.error("label char")),
            }
            if !is_label_start(self.peek()) {
                return Ok(bytes);
            }
        }
    }

    fn path(&mut self) -> Result<Path, ParseError> {
        self.skip_ws();
        self.eat('/')?;
        if !is_label_start(self.peek()) {
            return Ok(Path::empty());
        }
        let mut labels = Vec::new();
        loop {
            labels.push(self.label()?);
            if !self.maybe_eat('/') {
                return Ok(Path::from_elems(&labels));
            }
        }
    }

    fn prefix(&mut self) -> Result<Prefix, ParseError> {
        self.skip_ws();
        self.eat('/')?;
        if !(is_label_start(self.peek()) || self.peek() == Some('*')) {
            return Ok(Prefix::default());
        }
        let mut elems = Vec::new();
        loop {
            if self.maybe_eat('*') {
                elems.push(PrefixElem::Any);
            } else {
                elems.push(PrefixElem::Label(self.label()?.into()));
            }
            if !self.maybe_eat('/') {
                return Ok(Prefix::new(elems));
            }
        }
    }

    fn dentry(&mut self) -> Result<Dentry, ParseError> {
        let prefix = self.prefix()?;
        self.skip_ws();
        self.eat('=')?;
        self.eat('>')?;
        let dst = self.tree()?;
        Ok(Dentry::new(prefix, dst))
    }

    fn tree(&mut self) -> Result<NameTree<Path>, ParseError> {
        let mut alts = Vec::new();
        loop {
            alts.push(self.tree1()?);
            self.skip_ws();
            if !self.maybe_eat('|') {
                break;
            }
        }
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(NameTree::Neg)
        } else {
            NameTree::Alt(alts)
        })
    }

    fn tree1(&mut self) -> Result<NameTree<Path>, ParseError> {
        let mut branches = Vec::new();
        loop {
            branches.push(self.weighted()?);
            self.skip_ws();
            if !self.maybe_eat('&') {
                break;
            }
        }
        Ok(if branches.len() == 1 {
            // A lone weight is dropped, as Finagle does.
            branches.pop().map_or(NameTree::Neg, |w| w.tree)
        } else {
            NameTree::Union(branches)
        })
    }

    fn weighted(&mut self) -> Result<Weighted<Path>, ParseError> {
        self.skip_ws();
        let weight = if is_number_char(self.peek()) {
            let w = self.number()?;
            self.skip_ws();
            self.eat('*')?;
            self.skip_ws();
            w
        } else {
            DEFAULT_WEIGHT
        };
        Ok(Weighted::new(weight, self.simple()?))
    }

    fn number(&mut self) -> Result<f64, ParseError> {
        let start = self.i;
        let mut seen_dot = false;
        while is_number_char(self.peek()) {
            if self.peek() == Some('.') {
                if seen_dot {
                    return Err(self.error("number char"));
                }
                seen_dot = true;
            }
            self.bump();
        }
        let text = &self.s[start..self.i];
        if text == "." {
            return Err(self.error_found("weight", "'.'"));
        }
        match text.parse::<f64>() {
            Ok(w) if w.is_finite() => Ok(w),
            _ => Err(self.error_found("finite weight", &format!("'{text}'"))),
        }
    }

    fn simple(&mut self) -> Result<NameTree<Path>, ParseError> {
        self.skip_ws();
        match self.peek() {
            Some('(') => {
                if self.nesting == MAX_NESTING {
                    return Err(self.error_found(
                        &format!("at most {MAX_NESTING} nested parentheses"),
                        "another '('",
                    ));
                }
                self.bump();
                self.nesting += 1;
                let tree = self.tree()?;
                self.skip_ws();
                self.eat(')')?;
                self.nesting -= 1;
                Ok(tree)
            }
            Some('/') => Ok(NameTree::Leaf(self.path()?)),
            Some('!') => {
                self.bump();
                Ok(NameTree::Fail)
            }
            Some('~') => {
                self.bump();
                Ok(NameTree::Neg)
            }
            Some('$') => {
                self.bump();
                Ok(NameTree::Empty)
            }
            _ => Err(self.error("simple")),
        }
    }
}

impl NameTree<Path> {
    /// Parses a name tree (`/a & 2 * /b | ~`).
    pub fn read(s: &str) -> Result<NameTree<Path>, ParseError> {
        parse_tree(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl fmt::Debug, ParseError>) -> String {
        r.expect_err("a syntax error").to_string()
    }

    #[test]
    fn error_messages_bracket_the_offending_character() {
        assert_eq!(
            err(Path::read("/foo^bar")),
            "end of input expected but '^' found at '/foo[^]bar'"
        );
        assert_eq!(
            err(Path::read("/foo/bar/")),
            "label char expected but end of input found at '/foo/bar/[]'"
        );
        assert_eq!(
            err(Dtab::parse("/foo^bar")),
            "'=' expected but '^' found at '/foo[^]bar'"
        );
    }

    #[test]
    fn whitespace_is_javas() {
        assert!(is_whitespace(' ') && is_whitespace('\u{1f}') && is_whitespace('\u{3000}'));
        assert!(!is_whitespace('\u{a0}') && !is_whitespace('\u{85}') && !is_whitespace('x'));
    }
}
