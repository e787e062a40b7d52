//! The attribute's options: `#[job(name = "..", queue = "..", priority = 1, retries = 5,
//! timeout = "30s")]`, each checked here so that a typo fails the build, not the first enqueue.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprLit, ExprUnary, Ident, Lit, LitStr, Token, UnOp};

/// The longest queue name a store accepts (`firelane_core::MAX_QUEUE_NAME`).
const MAX_QUEUE_NAME: usize = 64;
/// The longest job name a store accepts (`NewJob::validate`).
const MAX_JOB_NAME: usize = 255;
/// The longest duration accepted: what fits a signed 64-bit count of milliseconds, the unit
/// stores keep.
const MAX_MILLIS: u64 = i64::MAX as u64;

/// Every option, with the form it takes, for "unknown option" and "malformed value" errors.
const OPTIONS: [(&str, &str); 5] = [
    ("name", "`name = \"stable_job_name\"`"),
    (
        "queue",
        "`queue = \"emails\"` (1 to 64 characters: lowercase letters, digits, `_` and `-`)",
    ),
    (
        "priority",
        "`priority = 10` (an `i32`; higher runs sooner, default 0)",
    ),
    (
        "retries",
        "`retries = 5` (how many times to retry) or `retries = [\"1s\", \"30s\", \"5m\"]` (one delay per retry)",
    ),
    (
        "timeout",
        "`timeout = \"30s\"` (a whole number with a unit: ms, s, m, h or d; a bare integer means seconds)",
    ),
];

/// The options given to the attribute.
#[derive(Default)]
pub(crate) struct JobOptions {
    pub(crate) name: Option<LitStr>,
    pub(crate) queue: Option<LitStr>,
    pub(crate) priority: Option<i32>,
    pub(crate) retries: Option<Retries>,
    pub(crate) timeout_millis: Option<u64>,
}

/// How a job retries.
pub(crate) enum Retries {
    /// This many retries with the default back-off.
    Count(u32),
    /// One retry per delay, in milliseconds.
    Delays(Vec<u64>),
}

impl Parse for JobOptions {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = JobOptions::default();
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            // `parse_any` so that a keyword (`crate = ..`, `type = ..`) is reported as an
            // unknown option rather than as a parse error.
            let key = input.call(Ident::parse_any)?;
            let key_name = key.unraw().to_string();
            let Some(form) = form_of(&key_name) else {
                let known = OPTIONS
                    .iter()
                    .map(|(name, _)| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(syn::Error::new(
                    key.span(),
                    format!(
                        "unknown option `{key_name}`: the options of #[firelane::job] are {known}"
                    ),
                ));
            };
            if seen.contains(&key_name) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("option `{key_name}` is given twice: keep one"),
                ));
            }
            seen.push(key_name.clone());
            if !input.peek(Token![=]) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("option `{key_name}` needs a value: write {form}"),
                ));
            }
            input.parse::<Token![=]>()?;
            let value: Expr = input.parse().map_err(|e| {
                syn::Error::new(e.span(), format!("expected a value: write {form}"))
            })?;
            match key_name.as_str() {
                "name" => options.name = Some(parse_name(&value)?),
                "queue" => options.queue = Some(parse_queue(&value)?),
                "priority" => options.priority = Some(parse_priority(&value)?),
                "retries" => options.retries = Some(parse_retries(&value)?),
                _ => options.timeout_millis = Some(parse_timeout(&value)?),
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "expected `,` between options: `#[firelane::job(queue = \"emails\", retries = 5)]`",
                )
            })?;
        }
        Ok(options)
    }
}

impl JobOptions {
    /// Whether any option was given (if none, the `Job` trait's default `options()` stays).
    pub(crate) fn is_set(&self) -> bool {
        self.queue.is_some()
            || self.priority.is_some()
            || self.retries.is_some()
            || self.timeout_millis.is_some()
    }

    /// The body of `Job::options()`: `JobOptions::new()` and one call per option given.
    pub(crate) fn to_tokens(&self) -> TokenStream {
        let mut calls = TokenStream::new();
        if let Some(queue) = &self.queue {
            calls.extend(quote!(.queue(#queue)));
        }
        if let Some(priority) = self.priority {
            calls.extend(quote!(.priority(#priority)));
        }
        match &self.retries {
            Some(Retries::Count(count)) => calls.extend(quote!(.retries(#count))),
            Some(Retries::Delays(delays)) => calls.extend(quote!(
                .retry_delays([#(::core::time::Duration::from_millis(#delays)),*])
            )),
            None => {}
        }
        if let Some(millis) = self.timeout_millis {
            calls.extend(quote!(.timeout(::core::time::Duration::from_millis(#millis))));
        }
        quote!(::firelane::JobOptions::new() #calls)
    }
}

fn form_of(key: &str) -> Option<&'static str> {
    OPTIONS
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, form)| *form)
}

/// A "malformed value" error on `value`, saying the form the option takes.
fn malformed(value: &impl Spanned, option: &str, problem: &str) -> syn::Error {
    let form = form_of(option).unwrap_or("a value");
    syn::Error::new(value.span(), format!("{problem}: write {form}"))
}

fn string_literal(value: &Expr) -> Option<&LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        Expr::Group(g) => string_literal(&g.expr),
        _ => None,
    }
}

fn parse_name(value: &Expr) -> syn::Result<LitStr> {
    let lit = string_literal(value)
        .ok_or_else(|| malformed(value, "name", "the job name must be a string literal"))?;
    let name = lit.value();
    if name.trim().is_empty() {
        return Err(malformed(lit, "name", "the job name must not be empty"));
    }
    if name.len() > MAX_JOB_NAME {
        return Err(malformed(
            lit,
            "name",
            &format!(
                "the job name is {} bytes long, more than the {MAX_JOB_NAME} allowed",
                name.len()
            ),
        ));
    }
    Ok(lit.clone())
}

fn parse_queue(value: &Expr) -> syn::Result<LitStr> {
    let lit = string_literal(value)
        .ok_or_else(|| malformed(value, "queue", "the queue must be a string literal"))?;
    let queue = lit.value();
    let valid_chars = queue
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if queue.is_empty() || queue.len() > MAX_QUEUE_NAME || !valid_chars {
        return Err(malformed(
            lit,
            "queue",
            &format!("{queue:?} is not a valid queue name"),
        ));
    }
    Ok(lit.clone())
}

fn parse_priority(value: &Expr) -> syn::Result<i32> {
    let (negative, lit) = match value {
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => (true, &**expr),
        other => (false, other),
    };
    let Expr::Lit(ExprLit {
        lit: Lit::Int(int), ..
    }) = lit
    else {
        return Err(malformed(
            value,
            "priority",
            "the priority must be an integer literal",
        ));
    };
    let magnitude: i64 = int
        .base10_parse()
        .map_err(|_| malformed(value, "priority", "the priority does not fit an `i32`"))?;
    let signed = if negative { -magnitude } else { magnitude };
    i32::try_from(signed)
        .map_err(|_| malformed(value, "priority", "the priority does not fit an `i32`"))
}

fn parse_retries(value: &Expr) -> syn::Result<Retries> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => int
            .base10_parse::<u32>()
            .map(Retries::Count)
            .map_err(|_| malformed(value, "retries", "the number of retries must fit a `u32`")),
        Expr::Array(ExprArray { elems, .. }) => {
            if elems.is_empty() {
                return Err(malformed(
                    value,
                    "retries",
                    "an empty list of delays means no retries; say so with `retries = 0`",
                ));
            }
            elems
                .iter()
                .map(|delay| parse_duration(delay, "retries"))
                .collect::<syn::Result<Vec<_>>>()
                .map(Retries::Delays)
        }
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => Err(malformed(
            value,
            "retries",
            "the number of retries cannot be negative",
        )),
        _ => Err(malformed(
            value,
            "retries",
            "expected a number of retries or a list of delays",
        )),
    }
}

fn parse_timeout(value: &Expr) -> syn::Result<u64> {
    let millis = parse_duration(value, "timeout")?;
    if millis == 0 {
        return Err(malformed(
            value,
            "timeout",
            "a timeout of zero would stop every attempt at once",
        ));
    }
    Ok(millis)
}

/// A duration in milliseconds: `"30s"`, `"1500ms"`, `"5m"`, `"2h"`, `"1d"`, or an integer of
/// seconds.
fn parse_duration(value: &Expr, option: &str) -> syn::Result<u64> {
    let bad = |problem: &str| malformed(value, option, problem);
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            let seconds: u64 = int
                .base10_parse()
                .map_err(|_| bad("the number of seconds is too large"))?;
            seconds
                .checked_mul(1000)
                .filter(|millis| *millis <= MAX_MILLIS)
                .ok_or_else(|| bad("the duration is too long"))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => duration_millis(&s.value()).map_err(|problem| bad(&problem)),
        Expr::Group(g) => parse_duration(&g.expr, option),
        _ => Err(bad(
            "a duration is a string with a unit (\"30s\") or an integer of seconds",
        )),
    }
}

/// Milliseconds in `text` (`"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`), or what is wrong.
fn duration_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim();
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a duration: it must start with a whole number"
        ));
    }
    let per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => {
            return Err(format!(
                "{text:?} has no unit: add one of ms, s, m, h, d (\"{number}s\")"
            ));
        }
        other => {
            return Err(format!(
                "{other:?} in {text:?} is not a unit: use ms, s, m, h or d"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit))
        .filter(|millis| *millis <= MAX_MILLIS)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(tokens: TokenStream) -> syn::Result<JobOptions> {
        syn::parse2(tokens)
    }

    fn error(tokens: TokenStream) -> String {
        match parse(tokens) {
            Ok(_) => String::from("(no error)"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(duration_millis("250ms"), Ok(250));
        assert_eq!(duration_millis("30s"), Ok(30_000));
        assert_eq!(duration_millis(" 5m "), Ok(300_000));
        assert_eq!(duration_millis("2 h"), Ok(7_200_000));
        assert_eq!(duration_millis("1d"), Ok(86_400_000));
        assert!(duration_millis("30").is_err_and(|e| e.contains("no unit")));
        assert!(duration_millis("s").is_err_and(|e| e.contains("whole number")));
        assert!(duration_millis("1.5s").is_err_and(|e| e.contains("not a unit")));
        assert!(duration_millis("3w").is_err_and(|e| e.contains("not a unit")));
        assert!(duration_millis("99999999999999999999d").is_err_and(|e| e.contains("too long")));
    }

    #[test]
    fn every_option_becomes_its_call() -> syn::Result<()> {
        let options = parse(quote!(
            name = "welcome",
            queue = "emails",
            priority = -3,
            retries = ["1s", 30, "5m"],
            timeout = 90
        ))?;
        let expanded = options.to_tokens().to_string();
        for part in [
            ". queue (\"emails\")",
            ". priority (- 3i32)",
            "from_millis (1000u64)",
            "from_millis (30000u64)",
            "from_millis (300000u64)",
            ". timeout (:: core :: time :: Duration :: from_millis (90000u64))",
        ] {
            assert!(expanded.contains(part), "{part} not in {expanded}");
        }
        assert_eq!(options.name.map(|n| n.value()).as_deref(), Some("welcome"));
        Ok(())
    }

    #[test]
    fn mistakes_say_what_to_write() {
        assert!(error(quote!(queues = "a")).contains("unknown option `queues`"));
        assert!(error(quote!(crate = "a")).contains("unknown option `crate`"));
        assert!(error(quote!(queue = "a", queue = "b")).contains("given twice"));
        assert!(error(quote!(queue)).contains("needs a value"));
        assert!(error(quote!(queue = "Bad Queue")).contains("not a valid queue name"));
        assert!(error(quote!(queue = emails)).contains("string literal"));
        assert!(error(quote!(retries = "many")).contains("`retries = 5`"));
        assert!(error(quote!(retries = -1)).contains("cannot be negative"));
        assert!(error(quote!(retries = [])).contains("retries = 0"));
        assert!(error(quote!(retries = ["1x"])).contains("not a unit"));
        assert!(error(quote!(priority = 3000000000)).contains("does not fit"));
        assert!(error(quote!(timeout = "0s")).contains("zero"));
        assert!(error(quote!(name = "  ")).contains("must not be empty"));
        assert!(error(quote!(queue = "a" retries = 1)).contains("expected `,`"));
        assert_eq!(error(quote!(queue = "a",)), "(no error)");
        assert_eq!(error(quote!()), "(no error)");
    }
}
