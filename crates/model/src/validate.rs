//! Field-level validation shared by every kind of input.

use std::fmt;

/// One problem with one field of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's wire name.
    pub field: String,
    /// What is wrong, as a sentence fragment ("must be ...").
    pub message: String,
}

impl FieldError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

/// A required text field of at most `max` characters; records an error when absent, empty
/// or too long.
pub fn required_text(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<String>,
    max: usize,
) -> Option<String> {
    match value {
        None => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        Some(v) if v.is_empty() => {
            errors.push(FieldError::new(field, "must not be empty"));
            None
        }
        Some(v) => checked_len(errors, field, v, max),
    }
}

/// An optional text field of at most `max` characters. An empty string is not an absent
/// field (SPEC §11): it is refused, naming the field.
pub fn optional_text(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<String>,
    max: usize,
) -> Option<String> {
    match value {
        None => None,
        Some(v) if v.is_empty() => {
            errors.push(FieldError::new(
                field,
                "must not be empty; leave the field out instead",
            ));
            None
        }
        Some(v) => checked_len(errors, field, v, max),
    }
}

fn checked_len(errors: &mut Vec<FieldError>, field: &str, v: String, max: usize) -> Option<String> {
    if v.chars().count() > max {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
        None
    } else {
        Some(v)
    }
}
