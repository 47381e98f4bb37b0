//! Phone numbers: parsed with libphonenumber's metadata, stored in E.164.

use phonenumber::{Mode, PhoneNumber, Type, country::Id, metadata::DATABASE};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

/// A region such as `KE`, used for national numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region(Id);

impl Region {
    pub fn parse(code: &str) -> Result<Self, String> {
        Id::from_str(code)
            .map(Self)
            .map_err(|_| format!("unknown region {code:?} (use an ISO 3166 code such as KE)"))
    }
}

impl Phone {
    pub fn parse(input: &str, region: Region) -> Result<Self, String> {
        let input = input.trim();
        if input.is_empty() {
            return Err("must not be empty".into());
        }
        // The parser skips characters it does not know; control characters (U+0000 among
        // them, which PostgreSQL refuses) are an error, whatever path the text came by.
        if input.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        let number: PhoneNumber = phonenumber::parse(Some(region.0), input)
            .map_err(|_| "is not a phone number".to_string())?;
        if !number.is_valid() {
            return Err("is not a valid phone number".into());
        }
        match number.number_type(&DATABASE) {
            Type::Mobile | Type::FixedLineOrMobile => {}
            _ => return Err("must be a mobile number that can receive SMS".into()),
        }
        Ok(Self(number.format().mode(Mode::E164).to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

pub fn mask(phone: &str) -> String {
    let n = phone.chars().count();
    phone
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i + 3 < n && c.is_ascii_digit() {
                '*'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ke() -> Region {
        Region::parse("KE").unwrap()
    }

    #[test]
    fn national_and_international_forms_become_e164() {
        assert_eq!(
            Phone::parse("0722000000", ke()).unwrap().as_str(),
            "+254722000000"
        );
        assert_eq!(
            Phone::parse("+254 722 000 000", ke()).unwrap().as_str(),
            "+254722000000"
        );
        assert_eq!(
            Phone::parse("+14155552671", ke()).unwrap().as_str(),
            "+14155552671"
        );
        assert!(Phone::parse("0722\u{0}000000", ke()).is_err());
    }

    #[test]
    fn rejects_garbage_short_and_landlines() {
        for bad in ["12345", "not a phone", "", "+254202222222", "0202222222"] {
            assert!(Phone::parse(bad, ke()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn masks_all_but_last_three_digits() {
        assert_eq!(mask("+254722000123"), "+*********123");
    }

    #[test]
    fn unknown_region_is_an_error() {
        assert!(Region::parse("XX").is_err());
    }
}
