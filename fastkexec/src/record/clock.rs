//! One clock across the handoff (DESIGN.md §2): the TSC keeps counting through
//! kexec, CLOCK_MONOTONIC and printk time restart. Every stamp is converted to
//! TSC ticks through fits of (rdtsc, clock) pairs.
//!
//! A [`Fit`] is stored as two points of the fitted line, in integers, so the
//! record carries it exactly and conversions use exact rational arithmetic.

use serde::Serialize;

/// The slowest TSC a record may claim: x86-64 CPUs with an invariant TSC run it at 1 GHz or
/// more; a tenth of that leaves room for any odd virtual machine.
pub const MIN_TSC_HZ: u64 = 100_000_000;
/// The fastest: no CPU's TSC runs near 10 GHz.
pub const MAX_TSC_HZ: u64 = 10_000_000_000;
/// The longest calibration (and the furthest an event may lie from it): a year. With this and
/// the rate bounds every conversion of u64 stamps stays far inside i128 (2^55 ns × 2^60 ticks).
pub const MAX_FIT_SPAN_NS: u64 = 366 * 86_400 * 1_000_000_000;

/// Reads the time stamp counter.
#[cfg(target_arch = "x86_64")]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects and exists on every x86-64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads CLOCK_MONOTONIC in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// One (TSC, clock) pair: the clock read bracketed by two TSC reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Midpoint of the two TSC reads.
    pub tsc: u64,
    /// The clock, ns.
    pub ns: u64,
    /// TSC ticks between the two reads (the pair's uncertainty).
    pub width: u64,
}

/// Takes `n` pairs against `clock` and keeps the better half (narrowest
/// brackets: an interrupt in between widens a pair and spoils it).
pub fn sample(n: usize, mut clock: impl FnMut() -> u64) -> Vec<Sample> {
    let mut v: Vec<Sample> = (0..n.max(2))
        .map(|_| {
            let a = rdtsc();
            let ns = clock();
            let b = rdtsc();
            Sample {
                tsc: a / 2 + b / 2 + (a % 2 + b % 2) / 2,
                ns,
                width: b.saturating_sub(a),
            }
        })
        .collect();
    v.sort_by_key(|s| s.width);
    v.truncate((v.len() / 2).max(2));
    v.sort_by_key(|s| s.ns);
    v
}

/// A linear map between a clock (ns) and the TSC, as two points on the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fit {
    pub tsc_a: u64,
    pub ns_a: u64,
    pub tsc_b: u64,
    pub ns_b: u64,
    /// Largest distance of a sample from the line, ns.
    pub err_ns: u64,
}

impl Fit {
    /// Least-squares line through the samples (clock ns → TSC). `None` when
    /// fewer than two distinct clock values or the TSC does not advance.
    pub fn from_samples(s: &[Sample]) -> Option<Fit> {
        let first = s.first()?;
        let (n, mut sx, mut sy) = (s.len() as f64, 0.0, 0.0);
        // Centre on the first sample so f64 keeps the precision.
        let x = |p: &Sample| p.ns.wrapping_sub(first.ns) as i64 as f64;
        let y = |p: &Sample| p.tsc.wrapping_sub(first.tsc) as i64 as f64;
        for p in s {
            sx += x(p);
            sy += y(p);
        }
        let (mx, my) = (sx / n, sy / n);
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for p in s {
            sxy += (x(p) - mx) * (y(p) - my);
            sxx += (x(p) - mx) * (x(p) - mx);
        }
        if sxx <= 0.0 {
            return None;
        }
        let slope = sxy / sxx;
        if !(slope.is_finite() && slope > 0.0) {
            return None;
        }
        let at = |xv: f64| my + slope * (xv - mx);
        let last = s.last()?;
        let (xa, xb) = (x(first), x(last));
        let err = s
            .iter()
            .map(|p| ((y(p) - at(x(p))) / slope).abs())
            .fold(0.0f64, f64::max);
        let tsc_of = |xv: f64| -> Option<u64> {
            let v = first.tsc as f64 + at(xv);
            (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v.round() as u64)
        };
        let fit = Fit {
            tsc_a: tsc_of(xa)?,
            ns_a: first.ns,
            tsc_b: tsc_of(xb)?,
            ns_b: last.ns,
            err_ns: err.ceil() as u64,
        };
        (fit.ns_b > fit.ns_a && fit.tsc_b > fit.tsc_a).then_some(fit)
    }

    /// A fit from a known frequency and one point.
    pub fn from_rate(tsc: u64, ns: u64, tsc_hz: f64) -> Option<Fit> {
        if !(tsc_hz.is_finite() && tsc_hz > 0.0) {
            return None;
        }
        let span_ns = 1_000_000_000u64;
        let tsc_b = tsc.checked_add((tsc_hz).round() as u64)?;
        Some(Fit {
            tsc_a: tsc,
            ns_a: ns,
            tsc_b,
            ns_b: ns.checked_add(span_ns)?,
            err_ns: 0,
        })
    }

    /// Whether the fit is one a machine could have produced: see [`Fit::check`].
    pub fn is_valid(&self) -> bool {
        self.check().is_ok()
    }

    /// Checks the fit against what hardware does: an increasing line, a TSC rate within
    /// [`MIN_TSC_HZ`, `MAX_TSC_HZ`] and a span of at most [`MAX_FIT_SPAN_NS`]. A fit that
    /// passes keeps every conversion of u64 inputs exact in i128. The error names the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.ns_b <= self.ns_a {
            return Err(format!(
                "calib_mono_b ({}) is not after calib_mono_a ({})",
                self.ns_b, self.ns_a
            ));
        }
        if self.tsc_b <= self.tsc_a {
            return Err(format!(
                "calib_tsc_b ({}) is not after calib_tsc_a ({})",
                self.tsc_b, self.tsc_a
            ));
        }
        let span = self.ns_b - self.ns_a;
        if span > MAX_FIT_SPAN_NS {
            return Err(format!(
                "calib_mono_b - calib_mono_a is {span} ns, more than the {MAX_FIT_SPAN_NS} ns \
                 (a year) a tracer can have been calibrating"
            ));
        }
        // u128: ticks (< 2^64) times 1e9 (< 2^30) cannot overflow.
        let hz = u128::from(self.tsc_b - self.tsc_a) * 1_000_000_000 / u128::from(span);
        if hz < u128::from(MIN_TSC_HZ) || hz > u128::from(MAX_TSC_HZ) {
            return Err(format!(
                "calib gives a TSC rate of {hz} Hz, outside the {MIN_TSC_HZ}..={MAX_TSC_HZ} Hz \
                 any x86-64 CPU runs at"
            ));
        }
        if self.err_ns > span {
            return Err(format!(
                "calib_err_ns ({}) is larger than the calibration span ({span} ns)",
                self.err_ns
            ));
        }
        Ok(())
    }

    /// TSC ticks per second.
    pub fn tsc_hz(&self) -> f64 {
        (i128::from(self.tsc_b) - i128::from(self.tsc_a)) as f64 * 1e9
            / (i128::from(self.ns_b) - i128::from(self.ns_a)) as f64
    }

    /// The TSC at clock value `ns` (exact rational arithmetic, rounded). Exact for a fit that
    /// passes [`Fit::check`]; otherwise it saturates rather than wrap or panic.
    pub fn tsc_at(&self, ns: u64) -> i128 {
        let dn = i128::from(ns) - i128::from(self.ns_a);
        let slope_num = i128::from(self.tsc_b) - i128::from(self.tsc_a);
        let den = i128::from(self.ns_b) - i128::from(self.ns_a);
        i128::from(self.tsc_a).saturating_add(mul_div_round(dn, slope_num, den))
    }

    /// Converts a TSC difference to ns (exact for a checked fit, saturating otherwise).
    pub fn ticks_to_ns(&self, ticks: i128) -> i128 {
        let num = i128::from(self.ns_b) - i128::from(self.ns_a);
        let den = i128::from(self.tsc_b) - i128::from(self.tsc_a);
        mul_div_round(ticks, num, den)
    }

    /// Converts a ns difference to TSC ticks (exact for a checked fit, saturating otherwise).
    pub fn ns_to_ticks(&self, ns: i128) -> i128 {
        let num = i128::from(self.tsc_b) - i128::from(self.tsc_a);
        let den = i128::from(self.ns_b) - i128::from(self.ns_a);
        mul_div_round(ns, num, den)
    }
}

/// `a * b / den` rounded to nearest; a product beyond i128 saturates (by its sign) instead of
/// overflowing, and a non-positive `den` counts as 1.
fn mul_div_round(a: i128, b: i128, den: i128) -> i128 {
    match a.checked_mul(b) {
        Some(num) => div_round(num, den.max(1)),
        None if (a < 0) != (b < 0) => i128::MIN,
        None => i128::MAX,
    }
}

/// `num / den` rounded to nearest, for `den > 0`.
fn div_round(num: i128, den: i128) -> i128 {
    let q = num.div_euclid(den);
    let r = num.rem_euclid(den);
    // r < den: r * 2 cannot overflow unless den > i128::MAX / 2, compared without multiplying.
    if r >= den - r {
        q.saturating_add(1)
    } else {
        q
    }
}

/// The clock fit for this machine now: `n` pairs against CLOCK_MONOTONIC.
pub fn calibrate_monotonic(n: usize) -> Vec<Sample> {
    sample(n, monotonic_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(hz: f64, offset: u64) -> impl Fn(u64) -> u64 {
        move |ns| offset + (ns as f64 * hz / 1e9).round() as u64
    }

    #[test]
    fn fit_recovers_a_line_through_noisy_samples() {
        let f = line(2_400_000_000.0, 1 << 40);
        let samples: Vec<Sample> = (0..50u64)
            .map(|i| {
                let ns = 1_000_000_000 + i * 1_000_000;
                // ±3 ticks of alternating noise.
                let noise = if i % 2 == 0 { 3 } else { 0 };
                Sample {
                    tsc: f(ns) + noise,
                    ns,
                    width: 10,
                }
            })
            .collect();
        let fit = Fit::from_samples(&samples).unwrap();
        assert!((fit.tsc_hz() - 2.4e9).abs() < 100.0, "{}", fit.tsc_hz());
        // 10 s later the extrapolation is still within a microsecond.
        let ns = 11_000_000_000u64;
        let err = fit.tsc_at(ns) - i128::from(f(ns));
        assert!(err.abs() < 2_400, "{err} ticks off");
        assert!(fit.err_ns <= 2, "{}", fit.err_ns);
        assert!((fit.ticks_to_ns(2_400_000_000) - 1_000_000_000).abs() <= 20);
        assert_eq!(fit.ns_to_ticks(1_000), 2_400);
    }

    #[test]
    fn degenerate_samples_give_no_fit() {
        assert_eq!(Fit::from_samples(&[]), None);
        let s = Sample {
            tsc: 5,
            ns: 7,
            width: 1,
        };
        assert_eq!(Fit::from_samples(&[s, s, s]), None);
        // A TSC running backwards against the clock is not a fit.
        let a = Sample {
            tsc: 100,
            ns: 1,
            width: 1,
        };
        let b = Sample {
            tsc: 50,
            ns: 2,
            width: 1,
        };
        assert_eq!(Fit::from_samples(&[a, b]), None);
    }

    #[test]
    fn conversions_round_to_nearest_and_handle_negatives() {
        let fit = Fit {
            tsc_a: 1000,
            ns_a: 0,
            tsc_b: 4000,
            ns_b: 1000,
            err_ns: 0,
        };
        assert_eq!(fit.tsc_at(0), 1000);
        assert_eq!(fit.tsc_at(1), 1003);
        assert_eq!(fit.ticks_to_ns(-3), -1);
        assert_eq!(fit.ticks_to_ns(2), 1);
        assert_eq!(fit.ticks_to_ns(1), 0);
        assert!((fit.tsc_hz() - 3e9).abs() < 1e-3);
        let r = Fit::from_rate(10, 20, 1e9).unwrap();
        assert_eq!(r.tsc_at(1020), 1010);
        assert!(Fit::from_rate(1, 1, f64::NAN).is_none());
    }

    #[test]
    fn live_clocks_advance_together() {
        let s = calibrate_monotonic(40);
        assert!(s.len() >= 2);
        assert!(s.windows(2).all(|w| w[0].ns <= w[1].ns));
        assert!(rdtsc() > 0);
    }

    #[test]
    fn fits_no_machine_makes_are_refused_by_field() {
        let ok = Fit {
            tsc_a: 1_000,
            ns_a: 0,
            tsc_b: 1_000 + 2_400_000_000,
            ns_b: 1_000_000_000,
            err_ns: 5,
        };
        assert_eq!(ok.check(), Ok(()));
        let cases = [
            (Fit { ns_b: 0, ..ok }, "calib_mono_b"),
            (Fit { tsc_b: 1_000, ..ok }, "calib_tsc_b"),
            // 99 MHz and 11 GHz.
            (
                Fit {
                    tsc_b: 1_000 + 99_000_000,
                    ..ok
                },
                "TSC rate",
            ),
            (
                Fit {
                    tsc_b: 1_000 + 11_000_000_000,
                    ..ok
                },
                "TSC rate",
            ),
            (
                Fit {
                    ns_b: MAX_FIT_SPAN_NS + 1,
                    tsc_b: u64::MAX,
                    ..ok
                },
                "a year",
            ),
            (
                Fit {
                    err_ns: 2_000_000_000,
                    ..ok
                },
                "calib_err_ns",
            ),
        ];
        for (fit, field) in cases {
            let err = fit.check().unwrap_err();
            assert!(err.contains(field), "{fit:?}: {err}");
            assert!(!fit.is_valid());
        }
    }

    #[test]
    fn unchecked_extreme_fits_saturate_instead_of_overflowing() {
        let fit = Fit {
            tsc_a: 0,
            ns_a: 0,
            tsc_b: u64::MAX,
            ns_b: u64::MAX,
            err_ns: 0,
        };
        // (2^64 - 2)(2^64 - 1) does not fit i128: saturated, not wrapped, no panic.
        assert_eq!(fit.tsc_at(u64::MAX - 1), i128::MAX);
        assert_eq!(fit.tsc_at(1 << 62), 1 << 62);
        assert_eq!(fit.ticks_to_ns(i128::MAX), i128::MAX);
        assert_eq!(fit.ns_to_ticks(i128::MIN), i128::MIN);
        let steep = Fit {
            tsc_b: u64::MAX,
            ns_b: 1,
            ..fit
        };
        assert_eq!(steep.tsc_at(u64::MAX), i128::MAX);
        assert!(steep.tsc_hz().is_finite());
    }
}
