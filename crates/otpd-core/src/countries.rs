//! The countries codes may be texted to: the first defence against SMS pumping.
//!
//! A pumping attack asks for codes to many numbers, each new, in ranges that pay the attacker
//! per message (often premium or international ones), so the per-destination anti-spam window
//! never trips and the operator pays. A service whose users live in a few countries names them,
//! and a send anywhere else is refused before anything is stored, charged or sent.

use std::collections::BTreeSet;
use std::fmt;

use crate::phone::E164;

/// Where sends may go: anywhere (the default), or only to numbers of the listed countries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DestinationCountries {
    #[default]
    Any,
    Only(BTreeSet<Country>),
}

/// A country as libphonenumber's metadata names it: an ISO 3166-1 alpha-2 code (`IT`, `GB`),
/// or `001` for the non-geographic numbering plans.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Country(&'static str);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountryListError {
    #[error("name at least one country, as ISO 3166 codes separated by commas (IT,DE,GB)")]
    Empty,
    #[error("{0:?} is not a country with a numbering plan (use ISO 3166 codes such as IT, DE, GB)")]
    Unknown(String),
}

impl Country {
    pub fn parse(code: &str) -> Result<Self, CountryListError> {
        let upper = code.trim().to_ascii_uppercase();
        phonenumber::metadata::DATABASE
            .by_id(&upper)
            .map(|plan| Self(plan.id()))
            .ok_or_else(|| CountryListError::Unknown(code.trim().to_owned()))
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl DestinationCountries {
    /// A comma-separated list of country codes, in any case (`IT, de,GB`).
    pub fn parse_list(list: &str) -> Result<Self, CountryListError> {
        let countries = list
            .split(',')
            .filter(|code| !code.trim().is_empty())
            .map(Country::parse)
            .collect::<Result<BTreeSet<_>, _>>()?;
        if countries.is_empty() {
            return Err(CountryListError::Empty);
        }
        Ok(Self::Only(countries))
    }

    /// The countries as a comma-separated list (`DE,IT`), as `parse_list` reads it back; `None`
    /// for any country.
    pub fn as_list(&self) -> Option<String> {
        match self {
            Self::Any => None,
            Self::Only(_) => Some(self.to_string()),
        }
    }

    /// Whether a code may be texted to `destination`.
    pub fn permit(&self, destination: &E164) -> bool {
        match self {
            Self::Any => true,
            Self::Only(countries) => destination
                .country()
                .is_some_and(|country| countries.contains(&Country(country))),
        }
    }
}

impl fmt::Display for DestinationCountries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any country"),
            Self::Only(countries) => {
                let codes: Vec<&str> = countries.iter().map(Country::as_str).collect();
                f.write_str(&codes.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> E164 {
        E164::parse(text).expect("a valid mobile number")
    }

    #[test]
    fn a_list_parses_in_any_case_and_spacing() {
        let list = DestinationCountries::parse_list(" it,DE , gb,it,").expect("list");
        assert_eq!(list.to_string(), "DE,GB,IT");
        assert_eq!(list.as_list().as_deref(), Some("DE,GB,IT"));
        assert_eq!(DestinationCountries::Any.as_list(), None);
    }

    #[test]
    fn unknown_codes_and_empty_lists_are_refused() {
        assert_eq!(
            DestinationCountries::parse_list("IT,XX"),
            Err(CountryListError::Unknown("XX".into()))
        );
        assert_eq!(
            DestinationCountries::parse_list("Italy"),
            Err(CountryListError::Unknown("Italy".into()))
        );
        assert_eq!(
            DestinationCountries::parse_list(" , "),
            Err(CountryListError::Empty)
        );
    }

    #[test]
    fn only_the_listed_countries_are_permitted() {
        let list = DestinationCountries::parse_list("IT,GB").expect("list");
        assert!(list.permit(&number("+393481234567")));
        assert!(list.permit(&number("+447400123456")));
        assert!(!list.permit(&number("+4915123456789")));
        assert!(DestinationCountries::Any.permit(&number("+4915123456789")));
    }

    #[test]
    fn countries_sharing_a_calling_code_are_told_apart() {
        // +1: Canada (Toronto's 416) and the United States (New York's 212).
        let canada = number("+14165550123");
        let united_states = number("+12125550123");
        assert_eq!(canada.country(), Some("CA"));
        assert_eq!(united_states.country(), Some("US"));
        let list = DestinationCountries::parse_list("CA").expect("list");
        assert!(list.permit(&canada));
        assert!(!list.permit(&united_states));
        // +7: Kazakhstan's mobiles (+7 70x) are not Russia's.
        assert_eq!(number("+77012345678").country(), Some("KZ"));
        assert_eq!(number("+79123456789").country(), Some("RU"));
    }

    #[test]
    fn a_number_of_no_plan_is_never_permitted_by_a_list() {
        let shaped_only = E164::parse_for_lookup("+999123456789").expect("shape");
        assert_eq!(shaped_only.country(), None);
        let list = DestinationCountries::parse_list("IT").expect("list");
        assert!(!list.permit(&shaped_only));
    }
}
