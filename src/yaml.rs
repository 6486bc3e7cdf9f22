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

/// Parses every document of a (possibly multi-document) YAML or JSON text.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, SyntaxError> {
    let mut builder = TreeBuilder::default();
    Parser::new_from_str(text).load(&mut builder, true).map_err(|e| SyntaxError {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.info().to_owned(),
    })?;
    Ok(builder.documents)
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
    /// Anchored nodes, by anchor id, for aliases (`*name`) to copy.
    anchors: Vec<(usize, Node)>,
    /// Anchor ids of the open collections, parallel to `stack`.
    open_anchors: Vec<usize>,
}

impl TreeBuilder {
    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
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
        let line = mark.line();
        match event {
            Event::Scalar(text, style, anchor, _) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                self.push_value(Node { value: Value::Scalar { text, quoted }, line }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push((Node { value: Value::Sequence(Vec::new()), line }, None));
                self.open_anchors.push(anchor);
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((Node { value: Value::Mapping(Vec::new()), line }, None));
                self.open_anchors.push(anchor);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let (Some((node, _)), Some(anchor)) = (self.stack.pop(), self.open_anchors.pop()) {
                    self.push_value(node, anchor);
                }
            }
            Event::Alias(anchor) => {
                let target =
                    self.anchors.iter().rev().find(|(id, _)| *id == anchor).map(|(_, node)| node.clone());
                if let Some(mut node) = target {
                    node.line = line;
                    self.push_value(node, 0);
                }
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
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
    fn syntax_errors_have_a_position() {
        let error = parse_documents("a: [1, 2\n").expect_err("unclosed list");
        assert!(error.line >= 1, "{error}");
    }
}
