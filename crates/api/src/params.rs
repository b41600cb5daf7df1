//! Query-string parsing with errors that name the parameter.
//!
//! Rules shared by every dialect: an empty value counts as absent; a parameter given twice is
//! an error (rather than silently picking one); unknown parameters are ignored; numbers out of
//! range are refused, never clamped.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use apitrail_model::Timestamp;

use crate::error::ApiError;

/// Why a value with a NUL character is refused: no store can keep one as text (PostgreSQL
/// refuses it outright), so it is refused at the door on every backend alike.
pub const NUL_MESSAGE: &str = "must not contain NUL (\\u0000) characters";

/// The top-level fields of a JSON object text whose value (at any depth, keys included)
/// contains a NUL character, in order; `None` stands for the whole text when it has a
/// `\u0000` escape but cannot be read here (fail closed: it might hide a NUL). Cheap for the
/// usual text without that escape.
pub fn nul_fields(json: &str) -> Vec<Option<String>> {
    fn has_nul(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(has_nul),
            serde_json::Value::Object(map) => {
                map.iter().any(|(k, v)| k.contains('\0') || has_nul(v))
            }
            _ => false,
        }
    }
    if !json.contains("\\u0000") {
        return Vec::new();
    }
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) {
        Ok(map) => map
            .iter()
            .filter(|(k, v)| k.contains('\0') || has_nul(v))
            .map(|(k, _)| Some(k.replace('\0', "\\u0000")))
            .collect(),
        Err(_) => vec![None],
    }
}

/// The decoded pairs of a query string.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes a raw query string (`application/x-www-form-urlencoded`).
    pub fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self { pairs }
    }

    /// The names of the parameters given with a value, in order (repeats included).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.as_str())
    }

    /// The value of `name`, if present and non-empty.
    pub fn str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut found = None;
        for (k, v) in &self.pairs {
            if k == name && !v.is_empty() {
                if found.is_some() {
                    return Err(ApiError::param(name, "must be given at most once"));
                }
                found = Some(v.as_str());
            }
        }
        match found {
            Some(v) if v.contains('\0') => Err(ApiError::param(name, NUL_MESSAGE)),
            v => Ok(v),
        }
    }

    /// An owned text value of at most `max` characters.
    pub fn text(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.str(name)? {
            Some(v) if v.chars().count() > max => Err(ApiError::param(
                name,
                format!("must be at most {max} characters"),
            )),
            v => Ok(v.map(str::to_owned)),
        }
    }

    /// An integer within `range`.
    pub fn int<T>(&self, name: &str, range: RangeInclusive<T>) -> Result<Option<T>, ApiError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let Some(raw) = self.str(name)? else {
            return Ok(None);
        };
        let out_of_range = || {
            ApiError::param(
                name,
                format!(
                    "must be an integer between {} and {}",
                    range.start(),
                    range.end()
                ),
            )
        };
        let looks_integral = {
            let digits = raw.strip_prefix('-').unwrap_or(raw);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        };
        if !looks_integral {
            return Err(out_of_range());
        }
        match raw.parse::<T>() {
            Ok(v) if range.contains(&v) => Ok(Some(v)),
            // Digits that overflow T are out of range too.
            _ => Err(out_of_range()),
        }
    }

    /// An RFC 3339 timestamp with an offset.
    pub fn timestamp(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        let Some(raw) = self.str(name)? else {
            return Ok(None);
        };
        match Timestamp::parse(raw) {
            Ok(t) => Ok(Some(t)),
            // `+02:00` sent unencoded arrives as ` 02:00` (a `+` in a query string means a
            // space); the intent is unambiguous, so accept it.
            Err(e) => match repair_plus(raw).map(|fixed| Timestamp::parse(&fixed)) {
                Some(Ok(t)) => Ok(Some(t)),
                _ => Err(ApiError::param(name, e.to_string())),
            },
        }
    }

    /// One of a fixed set of words, parsed by `parse`; `expected` lists them for the error.
    pub fn choice<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.str(name)? {
            None => Ok(None),
            Some(v) => parse(v)
                .map(Some)
                .ok_or_else(|| ApiError::param(name, format!("must be one of {expected}"))),
        }
    }

    /// `true` or `false`.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.choice(
            name,
            |v| match v {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            "true, false",
        )
    }
}

/// Turns `...T12:00:00 02:00` back into `...T12:00:00+02:00`.
pub(crate) fn repair_plus(raw: &str) -> Option<String> {
    let (head, tail) = raw.rsplit_once(' ')?;
    let is_offset = tail.len() == 5
        && tail.as_bytes()[2] == b':'
        && tail
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 2 || b.is_ascii_digit());
    is_offset.then(|| format!("{head}+{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_refused_and_found_by_field() {
        let p = Params::parse(Some("a=x%00y&b=ok"));
        assert_eq!(p.str("a").unwrap_err().param.as_deref(), Some("a"));
        assert_eq!(p.str("b").unwrap(), Some("ok"));
        assert_eq!(
            nul_fields(r#"{"a":"x\u0000","b":"\\u0000 is text","c":{"d":["\u0000"]},"e\u0000":1}"#),
            vec![
                Some("a".to_owned()),
                Some("c".to_owned()),
                Some("e\\u0000".to_owned())
            ]
        );
        assert!(nul_fields(r#"{"a":"plain"}"#).is_empty());
        // Unreadable here (a number beyond f64), yet it has the escape: refused as a whole.
        assert_eq!(nul_fields(r#"{"a":"x\u0000","n":1e400}"#), vec![None]);
    }

    #[test]
    fn empty_values_are_absent_and_repeats_are_refused() {
        let p = Params::parse(Some("a=&b=1&c=1&c=2"));
        assert_eq!(p.str("a").unwrap(), None);
        assert_eq!(p.str("b").unwrap(), Some("1"));
        assert_eq!(p.str("c").unwrap_err().param.as_deref(), Some("c"));
        assert_eq!(p.str("missing").unwrap(), None);
    }

    #[test]
    fn integers_are_range_checked_not_clamped() {
        let p = Params::parse(Some(
            "a=0&b=101&c=50&d=1.5&e=99999999999999999999&f=-3&g=+5",
        ));
        assert!(p.int::<u32>("a", 1..=100).is_err());
        assert!(p.int::<u32>("b", 1..=100).is_err());
        assert_eq!(p.int::<u32>("c", 1..=100).unwrap(), Some(50));
        assert!(p.int::<u32>("d", 1..=100).is_err());
        assert!(p.int::<u32>("e", 1..=100).is_err());
        assert!(p.int::<u32>("f", 1..=100).is_err());
        assert!(p.int::<u32>("g", 1..=100).is_err());
    }

    #[test]
    fn timestamps_need_offsets_and_survive_unencoded_plus() {
        let p = Params::parse(Some(
            "a=2024-01-01T00:00:00Z&b=2024-01-01T02:00:00+02:00&c=2024-01-01T00:00:00",
        ));
        let a = p.timestamp("a").unwrap().unwrap();
        assert_eq!(p.timestamp("b").unwrap(), Some(a));
        assert_eq!(p.timestamp("c").unwrap_err().param.as_deref(), Some("c"));
    }
}
