//! WAL positions (LSNs) as PostgreSQL writes them: `X/Y`, two hexadecimal 32-bit halves.
//!
//! The one parser and formatter of the crate: `pg_controldata`'s output, the `/cluster`
//! document and the demo's summary all use these.

/// Parses `X/Y` hex LSN text; `None` unless both halves are hexadecimal and fit 32 bits.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

/// Formats an LSN as PostgreSQL does (`0/3000060`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        assert_eq!(parse_lsn("0/17414F8"), Some(0x17414F8));
        assert_eq!(parse_lsn("0/4000000"), Some(67108864));
        assert_eq!(parse_lsn("1/A0000028"), Some(0x1_A000_0028));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn("100000000/0"), None);
        assert_eq!(format_lsn(0x1_A000_0028), "1/A0000028");
        assert_eq!(format_lsn(67108864), "0/4000000");
    }
}
