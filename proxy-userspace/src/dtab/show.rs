//! The canonical printed form of trees, dentries and dtabs (Finagle's):
//! `/a=>/b;/c=>/d`, ` | ` and ` & ` between branches, weights other than 1
//! as `0.80*`, parentheses only where precedence needs them, one-branch
//! alternations and unions printed as their branch. Parsing what is printed
//! gives the tree back (weights to two decimals).

use std::fmt::{self, Display, Formatter, Write};

use super::entry::{Dentry, Dtab};
use super::tree::{DEFAULT_WEIGHT, NameTree, Weighted};

impl<T: Display> Display for NameTree<T> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        show(self, f)
    }
}

/// Top level: an alternation needs no parentheses here.
fn show<T: Display>(tree: &NameTree<T>, f: &mut Formatter<'_>) -> fmt::Result {
    match only_child(tree) {
        Some(t) => show(t, f),
        None => match tree {
            NameTree::Alt(ts) => join(ts, " | ", f, |t, f| show_union_level(t, f)),
            _ => show_union_level(tree, f),
        },
    }
}

/// Inside an alternation: a union needs no parentheses, an alternation does.
fn show_union_level<T: Display>(tree: &NameTree<T>, f: &mut Formatter<'_>) -> fmt::Result {
    match only_child(tree) {
        Some(t) => show_union_level(t, f),
        None => match tree {
            NameTree::Union(ws) => join(ws, " & ", f, |w: &Weighted<T>, f| {
                if w.weight != DEFAULT_WEIGHT {
                    f.write_str(&format_weight(w.weight))?;
                    f.write_char('*')?;
                }
                show_simple(&w.tree, f)
            }),
            NameTree::Alt(_) => parens(tree, f),
            _ => show_simple(tree, f),
        },
    }
}

/// A union branch: anything compound is parenthesised.
fn show_simple<T: Display>(tree: &NameTree<T>, f: &mut Formatter<'_>) -> fmt::Result {
    match only_child(tree) {
        Some(t) => show_simple(t, f),
        None => match tree {
            NameTree::Union(_) | NameTree::Alt(_) => parens(tree, f),
            NameTree::Leaf(t) => t.fmt(f),
            NameTree::Fail => f.write_str("!"),
            NameTree::Neg => f.write_str("~"),
            NameTree::Empty => f.write_str("$"),
        },
    }
}

fn parens<T: Display>(tree: &NameTree<T>, f: &mut Formatter<'_>) -> fmt::Result {
    f.write_char('(')?;
    show(tree, f)?;
    f.write_char(')')
}

/// The branch of a one-branch alternation or union, which prints as it.
fn only_child<T>(tree: &NameTree<T>) -> Option<&NameTree<T>> {
    match tree {
        NameTree::Alt(ts) if ts.len() == 1 => Some(&ts[0]),
        NameTree::Union(ws) if ws.len() == 1 => Some(&ws[0].tree),
        _ => None,
    }
}

/// Joins the branches; a branchless alternation or union (which the parser
/// never makes) evaluates as neg and prints as `~`.
fn join<I>(
    items: &[I],
    sep: &str,
    f: &mut Formatter<'_>,
    mut each: impl FnMut(&I, &mut Formatter<'_>) -> fmt::Result,
) -> fmt::Result {
    if items.is_empty() {
        return f.write_str("~");
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        each(item, f)?;
    }
    Ok(())
}

/// A weight with two decimals, rounded as Java's `%.2f` rounds: half up,
/// applied to the shortest decimal form of the number.
pub fn format_weight(w: f64) -> String {
    let shortest = w.to_string();
    let (int, frac) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let mut digits: Vec<u8> = int
        .bytes()
        .chain(frac.bytes().chain(*b"00").take(2))
        .collect();
    if frac.as_bytes().get(2).is_some_and(|&d| d >= b'5') {
        // Carry the rounding up through the digits.
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - 2;
    let mut out = String::with_capacity(digits.len() + 1);
    out.extend(digits[..split].iter().map(|&d| d as char));
    out.push('.');
    out.extend(digits[split..].iter().map(|&d| d as char));
    out
}

impl Display for Dentry {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}=>{}", self.prefix, self.dst)
    }
}

impl Display for Dtab {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, d) in self.dentries().iter().enumerate() {
            if i > 0 {
                f.write_char(';')?;
            }
            d.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_like_java() {
        assert_eq!(format_weight(0.8), "0.80");
        assert_eq!(format_weight(2.0), "2.00");
        assert_eq!(format_weight(0.125), "0.13");
        assert_eq!(format_weight(0.994), "0.99");
        assert_eq!(format_weight(0.995), "1.00");
        assert_eq!(format_weight(9.999), "10.00");
        assert_eq!(format_weight(0.0), "0.00");
        assert_eq!(format_weight(1e21), "1000000000000000000000.00");
    }
}
