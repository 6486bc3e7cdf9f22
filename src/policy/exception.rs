//! Exceptions: images the policy refuses, admitted anyway for a stated reason until a date.
//!
//! An exception names one image, one repository (every tag and digest), or only namespaces
//! (every image there), optionally limited to some namespaces; it always carries an expiry date
//! and a reason (a ticket, a name), because an exception without an end becomes the policy.
//! Admission, the audit and `check` honour the same exceptions through [`Policy::decide`]. From
//! the day after `expires` (UTC) an exception admits nothing, and a denial it would have
//! covered says that it expired.
//!
//! Exceptions are looked at only for images the rules refuse, so a policy without any costs
//! nothing, and one with some costs nothing for allowed images.

use std::time::{SystemTime, UNIX_EPOCH};

use super::pattern::canonical_host;
use super::{HOST_BUF_LEN, NamespacePattern, Registry};
use crate::image::Reference;

/// What an exception admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExceptionSubject {
    /// One image, in its normalized form: `quay.io/vendor/legacy:1.2`.
    Image(String),
    /// Every tag and digest of one repository: canonical host and path.
    Repository { host: String, path: String },
    /// Every image in the exception's namespaces.
    Namespaces,
}

/// One exception of the policy.
#[derive(Debug, Clone)]
pub struct Exception {
    pub subject: ExceptionSubject,
    /// Where it applies; `None` for every namespace (only with an image or a repository).
    pub namespaces: Option<Vec<NamespacePattern>>,
    /// The last day it holds, as written (`2027-01-31`, UTC).
    pub expires: String,
    /// When it stops holding: the end of that day, UTC, in Unix seconds.
    pub expires_at: i64,
    pub reason: String,
    /// Where it starts in the policy document.
    pub line: usize,
}

impl PartialEq for Exception {
    fn eq(&self, other: &Self) -> bool {
        self.line == other.line && self.subject == other.subject
    }
}

impl Exception {
    /// What it admits, in words: `image quay.io/vendor/legacy:1.2 in namespaces legacy`.
    pub fn describe(&self) -> String {
        let subject = match &self.subject {
            ExceptionSubject::Image(image) => format!("image {image}"),
            ExceptionSubject::Repository { host, path } => format!("repository {host}/{path}"),
            ExceptionSubject::Namespaces => "every image".to_owned(),
        };
        match &self.namespaces {
            Some(patterns) => {
                let names: Vec<String> = patterns.iter().map(ToString::to_string).collect();
                format!("{subject} in namespaces {}", names.join(", "))
            }
            None => subject,
        }
    }

    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }

    /// Whether it covers the image in the namespace, expired or not.
    pub fn covers(&self, image: &Reference<'_>, short_name_host: &str, namespace: &str) -> bool {
        if self.namespaces.as_ref().is_some_and(|patterns| !patterns.iter().any(|p| p.matches(namespace))) {
            return false;
        }
        match &self.subject {
            ExceptionSubject::Namespaces => true,
            ExceptionSubject::Image(normalized) => image.to_string() == *normalized,
            ExceptionSubject::Repository { host, path } => {
                let domain = if image.is_short_name() { short_name_host } else { image.domain() };
                let mut buf = [0; HOST_BUF_LEN];
                canonical_host(domain, &mut buf) == Some(host.as_str()) && image.path().to_string() == *path
            }
        }
    }
}

/// Unix time now; exceptions expire against the wall clock.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Parses `YYYY-MM-DD` into the Unix time at the end of that day, UTC.
pub fn end_of_day(date: &str) -> Result<i64, String> {
    let problem = || format!("{date:?} is not a date as YYYY-MM-DD");
    let parts: Vec<&str> = date.split('-').collect();
    let [year, month, day] = parts.as_slice() else { return Err(problem()) };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return Err(problem());
    }
    let number = |text: &str| text.parse::<u8>().map_err(|_| problem());
    let year: i32 = year.parse().map_err(|_| problem())?;
    let month = time::Month::try_from(number(month)?).map_err(|_| problem())?;
    let date = time::Date::from_calendar_date(year, month, number(day)?)
        .map_err(|e| format!("{date:?} is not a calendar date: {e}"))?;
    Ok(date.midnight().assume_utc().unix_timestamp() + 86_400)
}

/// The registry whose pull secret an excepted image still gets: the entry that admitted its
/// repository and namespace but refused it for another reason (a tag rule). Images refused for
/// their registry or namespace get none: no copy of it exists there.
pub fn registry_for<'p>(denial: &super::Denial<'p>) -> Option<&'p Registry> {
    match denial {
        super::Denial::TagRule(registry, _) => Some(registry),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_the_end_of_the_day_written() {
        assert_eq!(end_of_day("1970-01-01"), Ok(86_400));
        // 2027-02-01T00:00:00Z.
        assert_eq!(end_of_day("2027-01-31"), Ok(1_801_440_000));
        for bad in
            ["2027-1-31", "2027-02-30", "31-01-2027", "2027-13-01", "tomorrow", "2027-01-31T00:00:00Z", ""]
        {
            assert!(end_of_day(bad).is_err(), "{bad}");
        }
    }
}
