//! YAML documents as trees that remember the line of every node.
//!
//! Policies are validated field by field so that every problem can be reported at once, each with
//! its line; serde stops at the first type error and forgets where fields were. The tree also
//! converts to JSON for the serde-based manifest views.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML node and the line (1-based) where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar as written; `quoted` scalars are always strings, plain ones may be numbers,
    /// booleans or null.
    Scalar {
        text: String,
        quoted: bool,
    },
    Sequence(Vec<Node>),
    /// Entries in document order; YAML allows any key, but registry-gate only reads string keys.
    Mapping(Vec<(Node, Node)>),
}

/// A document that is not YAML at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The deepest nesting a document may have. Policies nest four deep and Kubernetes manifests a
/// few dozen; the trees are walked and dropped recursively, so depth must be bounded.
pub const MAX_DEPTH: usize = 128;
/// How many nodes aliases may add beyond what the text spells out. Without a budget, a few
/// hundred bytes of nested anchors and aliases (`a: &a [*b, *b, ...]`) expand to millions of
/// nodes; no honest document needs aliases to multiply its size.
pub const ALIAS_NODE_ALLOWANCE: usize = 10_000;

/// Parses every document of a (possibly multi-document) YAML or JSON text.
///
/// Bounded: at most [`MAX_DEPTH`] levels, and at most one node per byte of text plus
/// [`ALIAS_NODE_ALLOWANCE`], however the text uses aliases.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    // YAML allows only printable characters (YAML 1.2, c-printable). The parser stops at a NUL
    // without an error, which silently cut a policy (or a manifest) short: every deny rule
    // after it was gone.
    if let Some((offset, c)) = text.char_indices().find(|(_, c)| !is_printable(*c)) {
        let line = text[..offset].matches('\n').count() + 1;
        let column = text[..offset].rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let message =
            format!("contains the control character U+{:04X}, which YAML does not allow", u32::from(c));
        return Err(SyntaxError { line, column, message });
    }
    let mut builder =
        TreeBuilder { node_budget: text.len() + ALIAS_NODE_ALLOWANCE, ..TreeBuilder::default() };
    // The parser's own `load` walks nested collections recursively (100,000 `[` overflow the
    // stack before any limit here could act); pulling events one at a time keeps the walk flat.
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, mark) = parser.next_token().map_err(|e| SyntaxError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
        let end = event == Event::StreamEnd;
        builder.on_event(event, mark);
        if let Some(error) = builder.refused {
            return Err(error);
        }
        if end {
            return Ok(builder.documents);
        }
    }
}

/// YAML 1.2's `c-printable`: tab, line breaks, and the printable ranges of Unicode.
fn is_printable(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7E}' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        || c >= '\u{10000}'
}

impl Node {
    /// The scalar's text when the node is a string-like scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A plain `null`, `~` or empty scalar, which YAML reads as "no value".
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node holds, in words for error messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            _ if self.is_null() => "nothing (null)",
            Value::Scalar { .. } => "a scalar",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
        }
    }

    /// The node as JSON, resolving plain scalars by the YAML 1.2 core schema.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as Json;
        match &self.value {
            _ if self.is_null() => Json::Null,
            Value::Scalar { text, quoted: true } => Json::String(text.clone()),
            Value::Scalar { text, quoted: false } => match text.as_str() {
                "true" | "True" | "TRUE" => Json::Bool(true),
                "false" | "False" | "FALSE" => Json::Bool(false),
                _ => text
                    .parse::<i64>()
                    .map(Json::from)
                    .ok()
                    .or_else(|| {
                        text.parse::<f64>()
                            .ok()
                            .and_then(|f| serde_json::Number::from_f64(f).map(Json::Number))
                    })
                    .unwrap_or_else(|| Json::String(text.clone())),
            },
            Value::Sequence(items) => Json::Array(items.iter().map(Node::to_json).collect()),
            Value::Mapping(entries) => Json::Object(
                entries
                    .iter()
                    .map(|(key, value)| (key.as_str().unwrap_or_default().to_owned(), value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Turns the parser's event stream into trees.
#[derive(Default)]
struct TreeBuilder {
    documents: Vec<Node>,
    /// Open collections, each with the key it waits to pair when it is a mapping.
    stack: Vec<(Node, Option<Node>)>,
    /// Anchored nodes, by anchor id, with their size in nodes, for aliases (`*name`) to copy.
    anchors: Vec<(usize, Node, usize)>,
    /// For each open collection (parallel to `stack`): its anchor id, and the node count when it
    /// opened, from which its size follows when it closes.
    open: Vec<(usize, usize)>,
    /// Nodes built so far, alias copies included.
    nodes: usize,
    /// How many nodes the document may build.
    node_budget: usize,
    /// Set when the document broke a limit; the builder then ignores the rest of the stream.
    refused: Option<SyntaxError>,
}

impl TreeBuilder {
    fn refuse(&mut self, mark: Marker, message: String) {
        self.refused = Some(SyntaxError { line: mark.line(), column: mark.col() + 1, message });
        self.stack.clear();
        self.anchors.clear();
    }

    /// Counts `size` more nodes, or refuses the document when that breaks the budget.
    fn count(&mut self, size: usize, mark: Marker) -> bool {
        self.nodes = self.nodes.saturating_add(size);
        if self.nodes > self.node_budget {
            let message = format!(
                "expands to more than {} nodes (aliases may add at most {ALIAS_NODE_ALLOWANCE} nodes to what the text spells out)",
                self.node_budget
            );
            self.refuse(mark, message);
            return false;
        }
        true
    }

    fn push_value(&mut self, node: Node, anchor: usize, size: usize) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone(), size));
        }
        let Some((parent, pending_key)) = self.stack.last_mut() else {
            self.documents.push(node);
            return;
        };
        match &mut parent.value {
            Value::Sequence(items) => items.push(node),
            Value::Mapping(entries) => match pending_key.take() {
                Some(key) => entries.push((key, node)),
                None => *pending_key = Some(node),
            },
            Value::Scalar { .. } => unreachable!("scalars are never pushed on the stack"),
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.refused.is_some() {
            return;
        }
        let line = mark.line();
        let open = |builder: &mut Self, value: Value, anchor: usize| {
            if builder.stack.len() >= MAX_DEPTH {
                builder.refuse(mark, format!("nests deeper than {MAX_DEPTH} levels"));
                return;
            }
            if builder.count(1, mark) {
                builder.stack.push((Node { value, line }, None));
                builder.open.push((anchor, builder.nodes - 1));
            }
        };
        match event {
            Event::Scalar(text, style, anchor, _) => {
                if self.count(1, mark) {
                    let quoted = !matches!(style, TScalarStyle::Plain);
                    self.push_value(Node { value: Value::Scalar { text, quoted }, line }, anchor, 1);
                }
            }
            Event::SequenceStart(anchor, _) => open(self, Value::Sequence(Vec::new()), anchor),
            Event::MappingStart(anchor, _) => open(self, Value::Mapping(Vec::new()), anchor),
            Event::SequenceEnd | Event::MappingEnd => {
                if let (Some((node, _)), Some((anchor, opened_at))) = (self.stack.pop(), self.open.pop()) {
                    let size = self.nodes - opened_at;
                    self.push_value(node, anchor, size);
                }
            }
            Event::Alias(anchor) => {
                let Some(&(_, _, size)) = self.anchors.iter().rev().find(|(id, _, _)| *id == anchor) else {
                    self.refuse(mark, "has an alias to an anchor this document does not define".into());
                    return;
                };
                // Count before copying: the copy is what the budget exists to prevent.
                if !self.count(size, mark) {
                    return;
                }
                let target = self.anchors.iter().rev().find(|(id, _, _)| *id == anchor);
                if let Some(mut node) = target.map(|(_, node, _)| node.clone()) {
                    node.line = line;
                    self.push_value(node, 0, size);
                }
            }
            // Anchors belong to their document.
            Event::DocumentStart => self.anchors.clear(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_remember_their_lines() {
        let documents = parse_documents("a: 1\nlist:\n  - x\n  - 'y'\n---\nb: true\n").expect("valid YAML");
        assert_eq!(documents.len(), 2);
        let Value::Mapping(entries) = &documents[0].value else { panic!("a mapping") };
        let (key, list) = &entries[1];
        assert_eq!((key.as_str(), key.line, list.line), (Some("list"), 2, 3));
        assert_eq!(documents[0].to_json(), serde_json::json!({"a": 1, "list": ["x", "y"]}));
        assert_eq!(documents[1].to_json(), serde_json::json!({"b": true}));
    }

    #[test]
    fn aliases_copy_their_anchor() {
        let documents = parse_documents("base: &b [x]\ncopy: *b\n").expect("valid YAML");
        assert_eq!(documents[0].to_json(), serde_json::json!({"base": ["x"], "copy": ["x"]}));
    }

    #[test]
    fn alias_bombs_are_refused_before_they_expand() {
        // Nine levels of ten aliases each: 10^9 nodes from under 1 KB of text.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let previous = format!("*a{}", level - 1);
            let list = [previous.as_str(); 10].join(", ");
            text += &format!("a{level}: &a{level} [{list}]\n");
        }
        assert!(text.len() < 1024);
        let error = parse_documents(&text).expect_err("refused");
        assert!(error.message.contains("expands to more than"), "{error}");
        // A few honest aliases are fine.
        let documents = parse_documents("base: &b {x: 1}\none: *b\ntwo: *b\n").expect("valid YAML");
        assert_eq!(documents[0].to_json()["two"], serde_json::json!({"x": 1}));
    }

    #[test]
    fn deep_nesting_is_refused_without_exhausting_the_stack() {
        for text in ["[".repeat(100_000), "- ".repeat(10_000) + "x", "{a: ".repeat(50_000)] {
            let error = parse_documents(&text).expect_err("refused");
            assert!(error.message.contains("nests deeper") || error.line >= 1, "{error}");
        }
        let ok = format!("{}x{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_documents(&ok).is_ok());
        let too_deep = format!("{}x{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse_documents(&too_deep).expect_err("refused").message.contains("nests deeper than 128"));
    }

    #[test]
    fn control_characters_are_refused_with_their_position() {
        // A NUL used to end the document silently, dropping everything after it.
        let error = parse_documents("a: 1\nb: x\u{0}y\ndeny: [z]\n").expect_err("NUL");
        assert_eq!((error.line, error.column), (2, 5), "{error}");
        assert!(error.message.contains("U+0000"), "{error}");
        assert!(parse_documents("a: \u{7}\n").is_err(), "BEL");
        assert!(parse_documents("a: \"tab\there\"\r\nb: é ✓ 𝄞\n").is_ok());
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let error = parse_documents("a: [1, 2\n").expect_err("unclosed list");
        assert!(error.line >= 1, "{error}");
    }
}
