//! What can be wrong with a selector's text: the one error type the parsers return.

/// Why a selector is not a valid URI template. Offsets are byte offsets into the selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' at byte {offset}: an expression must end with '}}'")]
    UnclosedExpression {
        /// Where the `{` is.
        offset: usize,
    },
    /// A `}` outside any expression.
    #[error("unmatched '}}' at byte {offset}")]
    UnmatchedClosingBrace {
        /// Where the `}` is.
        offset: usize,
    },
    /// An expression with no variable, such as `{}` or `{+}`.
    #[error("empty expression at byte {offset}: an expression needs at least one variable")]
    EmptyExpression {
        /// Where the expression's `{` is.
        offset: usize,
    },
    /// An operator RFC 6570 reserves for future use: `=`, `,`, `!`, `@` or `|`.
    #[error("operator '{operator}' at byte {offset} is reserved by RFC 6570")]
    ReservedOperator {
        /// The operator.
        operator: char,
        /// Where it is.
        offset: usize,
    },
    /// A variable name that is empty or malformed.
    #[error(
        "invalid variable name at byte {offset}: a name is letters, digits, '_' and %XX, \
         with single dots between them"
    )]
    InvalidVariableName {
        /// Where the name goes wrong.
        offset: usize,
    },
    /// A prefix modifier whose length is missing or not in 1..=9999.
    #[error("invalid prefix modifier at byte {offset}: ':' must be followed by 1 to 9999")]
    InvalidPrefix {
        /// Where the `:` is.
        offset: usize,
    },
    /// A character that cannot appear at this place in an expression.
    #[error("unexpected {found:?} at byte {offset} in an expression (expected ',' or '}}')")]
    UnexpectedCharacter {
        /// The character.
        found: char,
        /// Where it is.
        offset: usize,
    },
    /// Not a valid URL pattern.
    #[error("invalid URL pattern: {reason}")]
    InvalidUrlPattern {
        /// What the URL Pattern parser found wrong.
        reason: String,
    },
}
