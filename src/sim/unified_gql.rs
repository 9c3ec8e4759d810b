//! A deliberately small GraphQL reader for the simulator's `unified`
//! dialect: one operation with one root field, whose arguments must all be
//! variables (`field(names: $names)`). It finds the operation kind, the
//! root field and the variable bound to each argument; the selection set is
//! not interpreted (the simulator answers every field the client reads).

use std::collections::HashMap;

/// `query`, `mutation` or `subscription`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    Mutation,
    Subscription,
}

/// The parsed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub kind: Kind,
    /// The root field, e.g. `tagValues`.
    pub field: String,
    /// Argument name → variable name (without `$`).
    pub args: HashMap<String, String>,
}

impl Operation {
    /// The value of argument `name` from `variables` (`Null` when unbound).
    pub fn arg<'a>(&self, name: &str, variables: &'a serde_json::Value) -> &'a serde_json::Value {
        static NULL: serde_json::Value = serde_json::Value::Null;
        self.args
            .get(name)
            .and_then(|var| variables.get(var))
            .unwrap_or(&NULL)
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() {
            match self.s[self.i] {
                b' ' | b'\t' | b'\r' | b'\n' | b',' => self.i += 1,
                b'#' => {
                    while self.i < self.s.len() && self.s[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn name(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        (self.i > start && !self.s[start].is_ascii_digit())
            .then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!(
                "syntax error: expected '{}' at offset {}",
                c as char, self.i
            ))
        }
    }

    /// Skips a balanced `open ... close` group, strings included.
    fn skip_group(&mut self, open: u8, close: u8) -> Result<(), String> {
        self.expect(open)?;
        let mut depth = 1;
        while self.i < self.s.len() {
            let c = self.s[self.i];
            self.i += 1;
            if c == b'"' {
                while self.i < self.s.len() && self.s[self.i] != b'"' {
                    self.i += if self.s[self.i] == b'\\' { 2 } else { 1 };
                }
                self.i += 1;
            } else if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
        }
        Err(format!("syntax error: unbalanced '{}'", open as char))
    }
}

/// Reads the operation of a GraphQL document. Errors are GraphQL error
/// messages.
pub fn parse(query: &str) -> Result<Operation, String> {
    let mut c = Cursor {
        s: query.as_bytes(),
        i: 0,
    };
    let kind = if c.peek() == Some(b'{') {
        Kind::Query
    } else {
        let kind = match c.name().as_deref() {
            Some("query") => Kind::Query,
            Some("mutation") => Kind::Mutation,
            Some("subscription") => Kind::Subscription,
            _ => return Err("syntax error: expected query, mutation or subscription".into()),
        };
        if c.peek()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            c.name();
        }
        if c.peek() == Some(b'(') {
            c.skip_group(b'(', b')')?;
        }
        kind
    };
    c.expect(b'{')?;
    let mut field = c.name().ok_or("syntax error: expected a field name")?;
    if c.peek() == Some(b':') {
        c.i += 1;
        field = c
            .name()
            .ok_or("syntax error: expected a field after the alias")?;
    }
    let mut args = HashMap::new();
    if c.peek() == Some(b'(') {
        c.i += 1;
        loop {
            if c.peek() == Some(b')') {
                c.i += 1;
                break;
            }
            let arg = c.name().ok_or("syntax error: expected an argument name")?;
            c.expect(b':')?;
            if c.peek() != Some(b'$') {
                return Err(format!(
                    "argument {arg:?} of {field} is an inline literal; this station only takes variables (\"{arg}: $var\")"
                ));
            }
            c.i += 1;
            let var = c.name().ok_or("syntax error: expected a variable name")?;
            args.insert(arg, var);
        }
    }
    if c.peek() == Some(b'{') {
        c.skip_group(b'{', b'}')?;
    }
    if c.peek() != Some(b'}') {
        return Err("only one root field per request is supported".into());
    }
    Ok(Operation { kind, field, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kind_field_and_variables() {
        let op = parse("query TagValues($names: [String!]!) { tagValues(names: $names, directRead: $d) { name value { value } error { code } } }").unwrap();
        assert_eq!(op.kind, Kind::Query);
        assert_eq!(op.field, "tagValues");
        assert_eq!(op.args["names"], "names");
        assert_eq!(op.args["directRead"], "d");
        let v = serde_json::json!({"names": ["a"]});
        assert_eq!(op.arg("names", &v), &serde_json::json!(["a"]));
        assert!(op.arg("directRead", &v).is_null());
        let op = parse("mutation { extendSession { token } }").unwrap();
        assert_eq!(
            (op.kind, op.field.as_str()),
            (Kind::Mutation, "extendSession")
        );
        assert_eq!(parse("{ browse { name } }").unwrap().field, "browse");
        assert_eq!(
            parse("query { x: browse { name } }").unwrap().field,
            "browse"
        );
    }

    #[test]
    fn refuses_literals_garbage_and_several_roots() {
        assert!(parse("query { tagValues(names: [\"a\"]) { name } }")
            .unwrap_err()
            .contains("inline literal"));
        for bad in [
            "",
            "{",
            "query (",
            "fragment x on y { a }",
            "{ a { b } c { d } }",
            "{ a(b: $) }",
            "query { \"}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
