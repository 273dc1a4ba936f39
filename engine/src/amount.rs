//! Exact money. Amounts are integers of 1/10 000 of a currency unit inside the engine, so the
//! seed's DECIMAL(19,4) maps one to one; `rust_decimal` appears only at this edge.

use rust_decimal::Decimal;

/// Decimal places the ledger keeps (the seed's DECIMAL(19,4)).
pub const AMOUNT_SCALE: u32 = 4;

/// The largest magnitude DECIMAL(19,4) holds, in units of 10^-AMOUNT_SCALE:
/// 999 999 999 999 999.9999.
pub const AMOUNT_UNITS_MAX: u64 = 9_999_999_999_999_999_999;

const _: () = assert!(AMOUNT_UNITS_MAX < u64::MAX);
const _: () = assert!(10u64.pow(19) - 1 == AMOUNT_UNITS_MAX);

/// The same bound for signed balances.
pub const BALANCE_UNITS_MAX: i128 = AMOUNT_UNITS_MAX as i128;

/// A non-negative quantity of money in units of 10^-4 (one IDR is 10 000 units).
///
/// Commands carry `Amount`s straight from the wire, so the engine re-checks
/// [`Amount::is_valid_positive`] before it uses one.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Amount(pub u64);

/// Why a decimal cannot be an [`Amount`]. The gateway maps each to a stable 4xx code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmountError {
    NotPositive,
    TooManyDecimals,
    TooLarge,
}

impl std::fmt::Display for AmountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AmountError::NotPositive => "amount must be greater than zero",
            AmountError::TooManyDecimals => "amount has more than 4 decimal places",
            AmountError::TooLarge => "amount exceeds DECIMAL(19,4)",
        })
    }
}

impl std::error::Error for AmountError {}

impl Amount {
    pub const ZERO: Amount = Amount(0);
    pub const MAX: Amount = Amount(AMOUNT_UNITS_MAX);

    /// Whole currency units, e.g. `Amount::whole(150_000)` is IDR 150 000. Panics on overflow:
    /// for constants and tests, never for input.
    pub const fn whole(units: u64) -> Amount {
        let value = units.checked_mul(10u64.pow(AMOUNT_SCALE));
        match value {
            Some(v) if v <= AMOUNT_UNITS_MAX => Amount(v),
            _ => panic!("Amount::whole overflow"),
        }
    }

    pub const fn units(self) -> u64 {
        self.0
    }

    /// A positive amount within DECIMAL(19,4): what every money-moving command needs.
    pub const fn is_valid_positive(self) -> bool {
        self.0 > 0 && self.0 <= AMOUNT_UNITS_MAX
    }

    /// Parses an exact decimal. Trailing zeros beyond four places are fine (`1.50000`);
    /// significant digits beyond four places are rejected, never rounded.
    pub fn from_decimal(value: Decimal) -> Result<Amount, AmountError> {
        if value.is_sign_negative() || value.is_zero() {
            return Err(AmountError::NotPositive);
        }
        let value = value.normalize();
        if value.scale() > AMOUNT_SCALE {
            return Err(AmountError::TooManyDecimals);
        }
        let mantissa = value.mantissa(); // positive, scale <= 4
        let units = mantissa
            .checked_mul(10i128.pow(AMOUNT_SCALE - value.scale()))
            .ok_or(AmountError::TooLarge)?;
        if units > BALANCE_UNITS_MAX {
            return Err(AmountError::TooLarge);
        }
        let units = u64::try_from(units).map_err(|_| AmountError::TooLarge)?;
        Ok(Amount(units))
    }

    pub fn to_decimal(self) -> Decimal {
        units_to_decimal(i128::from(self.0))
    }
}

/// A signed ledger quantity (a balance) in the same units, as an exact decimal.
pub fn units_to_decimal(units: i128) -> Decimal {
    // Every engine quantity is within ±BALANCE_UNITS_MAX, far inside Decimal's 96-bit mantissa.
    assert!(units.unsigned_abs() <= BALANCE_UNITS_MAX as u128);
    Decimal::from_i128_with_scale(units, AMOUNT_SCALE)
}

/// ISO 4217 numeric currency code. The engine treats currencies as opaque labels and keeps one
/// zero-sum ledger per currency; the gateway decides which codes it accepts.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Currency(pub u16);

impl Currency {
    pub const IDR: Currency = Currency(360);

    /// The alphabetic code for the currencies the bank uses, for display and the gateway.
    pub fn alpha(self) -> Option<&'static str> {
        match self.0 {
            360 => Some("IDR"),
            _ => None,
        }
    }

    pub fn from_alpha(code: &str) -> Option<Currency> {
        match code {
            "IDR" => Some(Currency::IDR),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test literal")
    }

    #[test]
    fn parses_exactly_and_rejects_what_does_not_fit() {
        assert_eq!(
            Amount::from_decimal(dec("150000")),
            Ok(Amount(1_500_000_000))
        );
        assert_eq!(Amount::from_decimal(dec("0.0001")), Ok(Amount(1)));
        assert_eq!(Amount::from_decimal(dec("1.50000")), Ok(Amount(15_000)));
        assert_eq!(
            Amount::from_decimal(dec("0.00001")),
            Err(AmountError::TooManyDecimals)
        );
        assert_eq!(
            Amount::from_decimal(dec("1.23456")),
            Err(AmountError::TooManyDecimals)
        );
        assert_eq!(
            Amount::from_decimal(dec("0")),
            Err(AmountError::NotPositive)
        );
        assert_eq!(
            Amount::from_decimal(dec("-5")),
            Err(AmountError::NotPositive)
        );
        assert_eq!(
            Amount::from_decimal(dec("999999999999999.9999")),
            Ok(Amount::MAX)
        );
        assert_eq!(
            Amount::from_decimal(dec("1000000000000000")),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            Amount::from_decimal(dec("79228162514264337593543950335")),
            Err(AmountError::TooLarge)
        );
    }

    #[test]
    fn round_trips_through_decimal() {
        for units in [1u64, 9_999, 10_000, 123_456_789, AMOUNT_UNITS_MAX] {
            let amount = Amount(units);
            assert_eq!(Amount::from_decimal(amount.to_decimal()), Ok(amount));
        }
        assert_eq!(units_to_decimal(-15_000).to_string(), "-1.5000");
    }
}
