//! What text from outside may carry, whichever way it came in (a body, a query parameter).

/// A C0 or C1 control character other than tab, line feed and carriage return: no text
/// reaches the rules or a database with one (PostgreSQL cannot even store NUL).
pub fn has_control_character(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}
