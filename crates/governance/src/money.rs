//! Money: integer pico-USD (10⁻¹² USD) everywhere; Redis counts nano-USD. Printing and exact
//! parsing of USD amounts.

/// Pico-USD per nano-USD (the Redis limiter's unit).
pub(crate) const PICO_PER_NANO: u64 = 1000;

/// `$1.234567` (micro-dollar precision, rounded down), for messages.
pub fn usd(pico: u64) -> String {
    let micro = pico / 1_000_000;
    format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000)
}

/// Parse an amount in USD ("5", "12.50", "0.000001") exactly, to pico-USD. At most six
/// decimals; at most $9,000,000 (a budget in Redis is exact to that).
pub fn parse_usd(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_start_matches('$');
    let bad = || format!("'{text}' is not an amount in USD, like \"25\" or \"12.50\"");
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 6 {
        return Err(format!("'{text}' has more than six decimals"));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    if whole > 9_000_000 {
        return Err(format!("'{text}' is above the largest budget, $9,000,000"));
    }
    let micro: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
    Ok((whole * 1_000_000 + micro) * 1_000_000)
}

/// [`usd`] without the dollar sign, for JSON fields named `..._usd`.
pub fn usd_plain(pico: u64) -> String {
    let mut s = usd(pico);
    s.remove(0);
    s
}
