//! The contract's page: `{items, total, page, per_page, pages}`, and the query parameters
//! that choose it. Also the parsing of boolean filters, so every list reads them alike.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::AppError;
use crate::error::FieldCheck;

pub const DEFAULT_PER_PAGE: i64 = 20;
pub const MAX_PER_PAGE: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: i64,
    pub per_page: i64,
}

impl PageRequest {
    pub fn offset(self) -> i64 {
        (self.page - 1).saturating_mul(self.per_page)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub page: i64,
    pub per_page: i64,
    pub pages: i64,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, total: i64, request: PageRequest) -> Self {
        Page {
            items,
            total,
            page: request.page,
            per_page: request.per_page,
            pages: (total + request.per_page - 1) / request.per_page,
        }
    }
}

/// Query parameters of a list call, with their problems collected per parameter.
pub struct ListQuery {
    params: HashMap<String, String>,
    check: FieldCheck,
}

impl ListQuery {
    pub fn new(params: HashMap<String, String>) -> Self {
        ListQuery {
            params,
            check: FieldCheck::new(),
        }
    }

    fn integer(&mut self, name: &str, default: i64) -> i64 {
        match self.params.get(name) {
            None => default,
            Some(text) => match text.trim().parse::<i64>() {
                Ok(value) if value >= 1 => value,
                _ => {
                    self.check.add(name, "must be an integer of at least 1");
                    default
                }
            },
        }
    }

    /// `page` (1-based) and `per_page` (default 20, clamped to 100); below 1 is an error.
    pub fn page(&mut self) -> PageRequest {
        PageRequest {
            page: self.integer("page", 1).min(1_000_000_000),
            per_page: self.integer("per_page", DEFAULT_PER_PAGE).min(MAX_PER_PAGE),
        }
    }

    pub fn text(&mut self, name: &str) -> Option<String> {
        let value = self
            .params
            .get(name)
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())?;
        if crate::text::has_control_character(&value) {
            self.check.add(name, "must not contain control characters");
            return None;
        }
        Some(value)
    }

    pub fn boolean(&mut self, name: &str) -> Option<bool> {
        let value = self.text(name)?;
        match value.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => {
                self.check.add(name, "must be true or false");
                None
            }
        }
    }

    pub fn id(&mut self, name: &str) -> Option<i64> {
        let value = self.text(name)?;
        match value.parse::<i64>() {
            Ok(id) => Some(id),
            Err(_) => {
                self.check.add(name, "must be an integer");
                None
            }
        }
    }

    /// An IP address (v4 or v6).
    pub fn ip(&mut self, name: &str) -> Option<std::net::IpAddr> {
        let value = self.text(name)?;
        match value.parse() {
            Ok(address) => Some(address),
            Err(_) => {
                self.check.add(name, "must be an IP address");
                None
            }
        }
    }

    /// An RFC 3339 time (or Unix milliseconds), as milliseconds.
    pub fn time(&mut self, name: &str) -> Option<i64> {
        let value = self.text(name)?;
        match crate::clock::parse_time(&value) {
            Some(millis) => Some(millis),
            None => {
                self.check.add(name, "must be an RFC 3339 time");
                None
            }
        }
    }

    /// Notes a problem of `name` found by the caller's own rule.
    pub fn problem(&mut self, name: &str, message: impl Into<String>) {
        self.check.add(name, message);
    }

    /// Ends parsing: any collected problem becomes one 400.
    pub fn finish(self) -> Result<(), AppError> {
        self.check.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        ListQuery::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn pages_default_clamp_and_refuse_zero() {
        let mut defaults = query(&[]);
        assert_eq!(
            defaults.page(),
            PageRequest {
                page: 1,
                per_page: 20
            }
        );
        let mut huge = query(&[("per_page", "5000")]);
        assert_eq!(huge.page().per_page, 100);
        assert!(huge.finish().is_ok());
        let mut zero = query(&[("page", "0")]);
        zero.page();
        assert!(zero.finish().is_err());
        let mut words = query(&[("per_page", "many")]);
        words.page();
        assert!(words.finish().is_err());
    }

    #[test]
    fn pages_count_rounds_up_and_is_zero_when_empty() {
        let request = PageRequest {
            page: 1,
            per_page: 20,
        };
        assert_eq!(Page::<()>::new(vec![], 0, request).pages, 0);
        assert_eq!(Page::<()>::new(vec![], 41, request).pages, 3);
    }
}
