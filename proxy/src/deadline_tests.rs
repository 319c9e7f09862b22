use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

#[test]
fn grpc_timeouts_parse_in_every_unit() {
    for (text, want) in [
        ("1H", Duration::from_secs(3600)),
        ("2M", Duration::from_secs(120)),
        ("3S", Duration::from_secs(3)),
        ("250m", Duration::from_millis(250)),
        ("7u", Duration::from_micros(7)),
        ("99999999n", Duration::from_nanos(99_999_999)),
        ("0m", Duration::ZERO),
        ("00000001S", Duration::from_secs(1)),
        ("99999999H", Duration::from_secs(99_999_999 * 3600)),
    ] {
        assert_eq!(parse_grpc_timeout(text.as_bytes()), Ok(want), "{text}");
    }
}

#[test]
fn bad_values_are_refused_with_a_reason() {
    use TimeoutError::*;
    for (text, want) in [
        ("", Empty),
        ("m", Digits),
        ("123456789m", Digits),
        ("1.5S", Digits),
        ("-1S", Digits),
        (" 1S", Digits),
        ("1s", Unit),
        ("1 S", Digits),
        ("100", NoUnit),
    ] {
        assert_eq!(parse_grpc_timeout(text.as_bytes()), Err(want), "{text:?}");
    }
}

#[test]
fn the_sockmesh_header_also_takes_bare_milliseconds() {
    assert_eq!(
        parse_sockmesh_timeout(b"1500"),
        Ok(Duration::from_millis(1500))
    );
    assert_eq!(parse_sockmesh_timeout(b"2S"), Ok(Duration::from_secs(2)));
    assert_eq!(
        parse_sockmesh_timeout(b"123456789"),
        Err(TimeoutError::Digits)
    );
}

#[test]
fn formatting_picks_the_finest_unit_that_fits() {
    for (d, want) in [
        (Duration::from_nanos(5), "5n"),
        (Duration::from_millis(250), "250000u"),
        (Duration::from_millis(99), "99000000n"),
        (Duration::from_secs(2), "2000000u"),
        (Duration::from_secs(100), "100000m"),
        (Duration::from_secs(200_000), "200000S"),
        (Duration::from_secs(99_999_999 * 3600), "99999999H"),
        (Duration::from_secs(u64::MAX), "99999999H"),
    ] {
        assert_eq!(format_timeout(d).as_deref(), Some(want), "{d:?}");
    }
    assert_eq!(format_timeout(Duration::ZERO), None);
}

#[test]
fn the_deadline_is_the_shorter_and_passes_on_what_is_left() {
    let t0 = Instant::now();
    let config = Duration::from_secs(2);
    let d = Deadline::new(t0, config, Some(Duration::from_millis(800)));
    assert_eq!(
        d.budget,
        Duration::from_millis(800),
        "the caller's is shorter"
    );
    assert_eq!(Deadline::new(t0, config, Some(config * 3)).budget, config);
    assert_eq!(Deadline::new(t0, config, None).budget, config);
    let later = t0 + Duration::from_millis(300);
    assert_eq!(d.remaining(later), Some(Duration::from_millis(500)));
    assert_eq!(d.propagate(later, None).as_deref(), Some("500000u"));
    assert_eq!(
        d.propagate(later, Some(Duration::from_millis(100)))
            .as_deref(),
        Some("100000u"),
        "a try passes on its own budget"
    );
    assert_eq!(
        d.try_budget(later, Some(Duration::from_secs(1))),
        Some(Duration::from_millis(500))
    );
    let spent = t0 + Duration::from_millis(800);
    assert_eq!(d.remaining(spent), None);
    assert_eq!(d.propagate(spent, None), None);
    assert_eq!(d.try_budget(t0 + Duration::from_secs(5), None), None);
}

proptest! {
    /// Arbitrary bytes never panic either parser, and whatever parses formats and reads
    /// back to the same duration.
    #[test]
    fn arbitrary_bytes_never_panic_and_parsed_values_round_trip(
        bytes in proptest::collection::vec(any::<u8>(), 0..12),
    ) {
        for d in [parse_grpc_timeout(&bytes), parse_sockmesh_timeout(&bytes)]
            .into_iter()
            .flatten()
        {
            match format_timeout(d) {
                Some(text) => prop_assert_eq!(parse_grpc_timeout(text.as_bytes()), Ok(d)),
                None => prop_assert!(d.is_zero()),
            }
        }
    }

    /// Well-formed values always parse.
    #[test]
    fn well_formed_values_parse(n in 0u64..100_000_000, unit in "[HMSmun]") {
        let text = format!("{n}{unit}");
        prop_assert!(parse_grpc_timeout(text.as_bytes()).is_ok());
        prop_assert!(parse_sockmesh_timeout(text.as_bytes()).is_ok());
    }

    /// Any duration formats to a valid value that is never longer than it and shorter by
    /// less than 1/100,000 of it (up to the largest value).
    #[test]
    fn formatting_truncates_a_little(secs in 0u64..400_000_000_000, nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos);
        if let Some(text) = format_timeout(d) {
            prop_assert!(text.len() <= MAX_DIGITS + 1);
            let back = parse_grpc_timeout(text.as_bytes()).unwrap();
            prop_assert!(back <= d);
            let max = Duration::from_secs(99_999_999 * 3600);
            if d <= max {
                prop_assert!((d - back).as_nanos() * 100_000 <= d.as_nanos(), "{:?} -> {}", d, text);
            } else {
                prop_assert_eq!(back, max);
            }
        } else {
            prop_assert!(d.is_zero());
        }
    }
}
