//! Spin expression templates: `"mysql://{{ user }}:{{ pass }}@host"`.
//!
//! The grammar is Spin's (`spin-expressions`): text up to the next `{{` is literal; after `{{`
//! everything up to the next `}}` is an expression, trimmed of whitespace; a `{{` with no later
//! `}}` is an error. There is no escape for a literal `{{`, and a lone `}}` is literal text.
//! An expression names an application variable; whether the name exists is checked by the
//! caller (the manifest loader), as Spin does.

use std::fmt;

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// One piece of a [`Template`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text copied as it is.
    Literal(String),
    /// `{{ name }}`: the (trimmed) expression between the braces.
    Variable(String),
}

/// The template is malformed. Displays as Spin's `invalid variable template: …` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError(String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid variable template: {}", self.0)
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    /// Parses `text` with Spin's template grammar.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after_open) = rest.strip_prefix("{{") {
                let (expr, after_close) = after_open
                    .split_once("}}")
                    .ok_or_else(|| TemplateError("unmatched '{{' in template".to_owned()))?;
                parts.push(Part::Variable(expr.trim().to_owned()));
                rest = after_close;
            } else {
                let end = rest.find("{{").unwrap_or(rest.len());
                parts.push(Part::Literal(rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
        Ok(Self { parts })
    }

    /// The pieces of the template, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// True when the template has no `{{ }}` expression.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The variable names the template refers to, in order (with repeats).
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Variable(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Renders the template, asking `lookup` for the value of each variable.
    pub fn render<'a, E>(
        &self,
        mut lookup: impl FnMut(&str) -> Result<&'a str, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Variable(name) => out.push_str(lookup(name)?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Part {
        Part::Literal(s.to_owned())
    }
    fn var(s: &str) -> Part {
        Part::Variable(s.to_owned())
    }

    #[test]
    fn parses_literals_and_expressions() {
        let cases: Vec<(&str, Vec<Part>)> = vec![
            ("", vec![]),
            ("plain", vec![lit("plain")]),
            ("{{ a }}", vec![var("a")]),
            ("{{a}}", vec![var("a")]),
            ("{{   spaced\t}}", vec![var("spaced")]),
            ("x-{{ a }}-y", vec![lit("x-"), var("a"), lit("-y")]),
            ("{{ a }}{{ b }}", vec![var("a"), var("b")]),
            (
                "mysql://{{ user }}:{{ pass }}@host",
                vec![
                    lit("mysql://"),
                    var("user"),
                    lit(":"),
                    var("pass"),
                    lit("@host"),
                ],
            ),
            // No escaping: a lone `}}` is literal, `{{}}` is an empty expression.
            ("a }} b", vec![lit("a }} b")]),
            ("{{}}", vec![var("")]),
            // The expression ends at the first `}}`.
            ("{{{ a }}}", vec![var("{ a"), lit("}")]),
        ];
        for (text, expected) in cases {
            assert_eq!(Template::parse(text).unwrap().parts(), expected, "{text:?}");
        }
    }

    #[test]
    fn unclosed_braces_are_an_error() {
        let err = Template::parse("{{ ok }} {{ unclosed").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid variable template: unmatched '{{' in template"
        );
        Template::parse("{{ a }").unwrap_err();
    }

    #[test]
    fn literal_detection_and_rendering() {
        assert!(Template::parse("https://example.com").unwrap().is_literal());
        let t = Template::parse("https://{{ host }}:{{ port }}").unwrap();
        assert!(!t.is_literal());
        assert_eq!(t.variables().collect::<Vec<_>>(), ["host", "port"]);
        let out = t
            .render(|name| match name {
                "host" => Ok::<_, ()>("db.local"),
                _ => Ok("3306"),
            })
            .unwrap();
        assert_eq!(out, "https://db.local:3306");
    }
}
