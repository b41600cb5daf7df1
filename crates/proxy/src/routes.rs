//! Route patterns (`/v1/users/{id}`, from a routes file or an OpenAPI document's `paths`),
//! compiled once into a radix tree (`matchit`), so that
//! matching a path costs the same whatever the number of routes. The most specific pattern
//! wins: at every segment a literal beats a placeholder (`/users/me` before `/users/{id}`).

use std::collections::HashMap;
use std::sync::Arc;

/// Why a route pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RouteError {
    /// 1-based line of the routes file (or position in the list).
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// A compiled set of route patterns.
#[derive(Clone, Default)]
pub struct Routes {
    router: matchit::Router<Arc<str>>,
    /// Normalized shape → the pattern that claimed it, to name a clash.
    shapes: HashMap<String, Arc<str>>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("len", &self.shapes.len())
            .finish()
    }
}

impl Routes {
    /// Parses a routes file: one pattern per line, `{name}` placeholders for whole segments;
    /// blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let mut routes = Self::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            routes.insert(line).map_err(|message| RouteError {
                line: n + 1,
                message,
            })?;
        }
        Ok(routes)
    }

    /// Routes from an OpenAPI 3 document's `paths` (JSON, or YAML when the text does not
    /// start with `{`), taken as written. Paths the tree cannot hold (a placeholder in part
    /// of a segment, two paths of one shape) are skipped and returned, for the caller to
    /// say so.
    pub fn from_openapi(text: &str) -> Result<(Self, Vec<String>), String> {
        let paths: Vec<String> = if text.trim_start().starts_with('{') {
            let doc: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
            doc.get("paths")
                .and_then(serde_json::Value::as_object)
                .ok_or("the document has no `paths` object")?
                .keys()
                .cloned()
                .collect()
        } else {
            let docs = yaml_rust2::YamlLoader::load_from_str(text)
                .map_err(|e| format!("not valid YAML: {e}"))?;
            match docs.first().map(|d| &d["paths"]) {
                Some(yaml_rust2::Yaml::Hash(paths)) => paths
                    .keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect(),
                _ => return Err("the document has no `paths` mapping".into()),
            }
        };
        let mut routes = Self::default();
        let mut skipped = Vec::new();
        for path in paths {
            if let Err(e) = routes.insert(&path) {
                skipped.push(e);
            }
        }
        Ok((routes, skipped))
    }

    /// Adds one pattern. Placeholders are renamed by position before they reach the tree,
    /// so `/users/{id}` and `/users/{user_id}/posts` coexist; two patterns of the same shape
    /// (`/a/{x}` and `/a/{y}`) clash.
    pub fn insert(&mut self, pattern: &str) -> Result<(), String> {
        let shape = shape(pattern)?;
        if let Some(earlier) = self.shapes.get(&shape) {
            return Err(if **earlier == *pattern {
                format!("`{pattern}` is listed twice")
            } else {
                format!("`{pattern}` matches the same paths as `{earlier}`")
            });
        }
        let value: Arc<str> = Arc::from(pattern);
        self.router
            .insert(shape.clone(), Arc::clone(&value))
            .map_err(|e| format!("`{pattern}`: {e}"))?;
        self.shapes.insert(shape, value);
        Ok(())
    }

    /// The most specific pattern matching `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Arc<str>> {
        self.router.at(path).ok().map(|m| m.value)
    }

    /// How many patterns there are.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }
}

/// The pattern with each placeholder renamed `{pN}` (N its segment), as the tree stores it.
fn shape(pattern: &str) -> Result<String, String> {
    if !pattern.starts_with('/') {
        return Err(format!("`{pattern}` must start with /"));
    }
    if pattern.len() > apitrail_model::request_log::rules::MAX_TEXT {
        return Err("a pattern is at most 1024 bytes".into());
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("`{pattern}` contains a space or control character"));
    }
    let mut out = String::with_capacity(pattern.len());
    for (i, segment) in pattern.split('/').enumerate().skip(1) {
        out.push('/');
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty() || name.contains(['{', '}', '*']) {
                return Err(format!(
                    "`{pattern}`: a placeholder is a name in braces, such as {{id}}"
                ));
            }
            out.push_str(&format!("{{p{i}}}"));
        } else if segment.contains(['{', '}']) {
            return Err(format!(
                "`{pattern}`: a placeholder must be a whole segment (`/{{id}}`, not `/{{id}}.json`)"
            ));
        } else {
            out.push_str(segment);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(lines: &[&str]) -> Routes {
        Routes::parse(&lines.join("\n")).unwrap()
    }

    #[test]
    fn a_literal_segment_beats_a_placeholder() {
        let r = routes(&[
            "/users/{id}",
            "/users/me",
            "/users/{user_id}/posts",
            "/users/me/posts/{post}",
            "/{tenant}/settings",
            "/static/settings",
        ]);
        let find = |p: &str| r.find(p).map(|s| s.to_string());
        assert_eq!(find("/users/42").as_deref(), Some("/users/{id}"));
        assert_eq!(find("/users/me").as_deref(), Some("/users/me"));
        assert_eq!(
            find("/users/7/posts").as_deref(),
            Some("/users/{user_id}/posts")
        );
        assert_eq!(
            find("/users/me/posts/9").as_deref(),
            Some("/users/me/posts/{post}")
        );
        // A literal prefix that leads nowhere falls back to the placeholder.
        assert_eq!(
            find("/users/me/posts").as_deref(),
            Some("/users/{user_id}/posts")
        );
        assert_eq!(
            find("/static/settings").as_deref(),
            Some("/static/settings")
        );
        assert_eq!(
            find("/acme/settings").as_deref(),
            Some("/{tenant}/settings")
        );
        assert_eq!(find("/users"), None);
        assert_eq!(find("/users/42/"), None);
        assert_eq!(find("/nothing"), None);
        assert_eq!(r.len(), 6);
    }

    #[test]
    fn openapi_paths_come_from_json_or_yaml() {
        let json = r#"{"openapi": "3.1.0", "paths": {
            "/pets/{petId}": {"get": {}}, "/pets/mine": {}, "/files/{name}.json": {}}}"#;
        let (r, skipped) = Routes::from_openapi(json).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.find("/pets/7").map(|s| &**s), Some("/pets/{petId}"));
        assert_eq!(r.find("/pets/mine").map(|s| &**s), Some("/pets/mine"));
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        let yaml = "openapi: 3.0.3\ninfo:\n  title: t\npaths:\n  /pets/{petId}:\n    get:\n      responses: {}\n  '/pets/{petId}/toys/{toy}':\n    get: {}\n  \"/stores\": {}\n";
        let (r, skipped) = Routes::from_openapi(yaml).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.find("/pets/1/toys/2").map(|s| &**s),
            Some("/pets/{petId}/toys/{toy}")
        );
        assert_eq!(r.find("/stores").map(|s| &**s), Some("/stores"));
        assert!(Routes::from_openapi("openapi: 3.0.0\n").is_err());
        assert!(Routes::from_openapi("{\"paths\": 1}").is_err());
        assert!(Routes::from_openapi("{ nope").is_err());
        assert!(Routes::from_openapi("a: [unclosed").is_err());
    }

    #[test]
    fn comments_and_blank_lines_are_skipped_and_errors_name_the_line() {
        let r = Routes::parse("# routes\n\n  /a/{x}  \n").unwrap();
        assert_eq!(r.find("/a/1").map(|s| &**s), Some("/a/{x}"));
        let err = |text: &str| Routes::parse(text).unwrap_err();
        assert_eq!(err("/a\nb").line, 2);
        assert!(err("/a/{x}\n/a/{y}").message.contains("same paths"));
        assert!(err("/a\n/a").message.contains("twice"));
        assert!(err("/f/{name}.json").message.contains("whole segment"));
        assert!(err("/f/{}").message.contains("placeholder"));
        assert!(err("/f/{*rest}").message.contains("placeholder"));
        assert!(err("/f/a b").message.contains("space"));
    }
}
