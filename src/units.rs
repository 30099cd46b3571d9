//! Exact names for the domain's numbers.
//!
//! A video has three different "positions" that are all integers and all easy to mix up: the
//! index of a frame in presentation order (what clients ask for), the number of a packet in
//! decode order (what the demuxer hands out), and timestamps in the stream's time base. Each
//! gets its own type so the compiler catches a packet number passed where a frame index was
//! meant. Byte sizes get one too, because the cache's bound is in bytes and config spells them
//! like `512MiB`.

use std::fmt;
use std::str::FromStr;

/// Index of a frame in presentation order: frame `i` is the `i`-th frame a full sequential
/// decode outputs, counting from 0, with nothing dropped or duplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameIndex(pub u32);

impl FrameIndex {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for FrameIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Number of a packet of the video stream in decode (demux) order, counting from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketNo(pub u32);

impl PacketNo {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// A presentation timestamp in the stream's time base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pts(pub i64);

/// A stream's time base: one tick is `num / den` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBase {
    pub num: i32,
    pub den: i32,
}

impl TimeBase {
    pub fn seconds(self, ticks: i64) -> f64 {
        if self.den == 0 {
            return 0.0;
        }
        ticks as f64 * self.num as f64 / self.den as f64
    }

    /// Seconds from `origin` to `ticks`, for any two timestamps a file may hold: the difference
    /// is taken in 128 bits, so timestamps near both ends of `i64` do not overflow.
    pub fn seconds_between(self, origin: i64, ticks: i64) -> f64 {
        if self.den == 0 {
            return 0.0;
        }
        (i128::from(ticks) - i128::from(origin)) as f64 * self.num as f64 / self.den as f64
    }
}

/// A number of bytes. Parses `1048576`, `512MiB`, `2GiB`, `64KiB`, `1.5GiB`, `100MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{}", self.0 / size, name);
            }
        }
        for (name, size) in UNITS {
            if self.0 >= size {
                return write!(f, "{:.1}{}", self.0 as f64 / size as f64, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "invalid byte size {0:?}: expected a number with an optional unit B, KiB, MiB, GiB, KB, MB or GB (like 512MiB)"
)]
pub struct ByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| ByteSizeError(s.to_string()))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            _ => return Err(ByteSizeError(s.to_string())),
        };
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(ByteSizeError(s.to_string()));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_and_decimal_units() {
        assert_eq!("512MiB".parse::<ByteSize>().unwrap(), ByteSize(512 << 20));
        assert_eq!("2GiB".parse::<ByteSize>().unwrap(), ByteSize(2 << 30));
        assert_eq!("1.5 GiB".parse::<ByteSize>().unwrap(), ByteSize(3 << 29));
        assert_eq!("100MB".parse::<ByteSize>().unwrap(), ByteSize(100_000_000));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
    }
}
