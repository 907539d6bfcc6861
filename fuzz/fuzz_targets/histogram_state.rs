//! The histogram state file (`state.json`, which `report` folds into and `export`/`serve`
//! read): parse, then every export format, then the round trip through `to_json`. Seeds:
//! states the library itself writes (`cargo xtask fuzz` folds a few boots into one).
#![no_main]

use fastkexec::metrics::export::{self, Format};
use fastkexec::metrics::histogram::State;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = State::parse(data) else {
        return;
    };
    for format in [
        Format::Prometheus,
        Format::OpenMetrics,
        Format::Json,
        Format::HdrLog,
    ] {
        let _ = export::render(format, &state);
    }
    // A state we accepted is one we can write and read back unchanged.
    let json = state.to_json().expect("an accepted state encodes");
    let again = State::parse(&json).expect("what to_json wrote parses");
    assert_eq!(again.boots(), state.boots());
    assert_eq!(again.phases().len(), state.phases().len());
    assert_eq!(
        again.to_json().expect("re-encodes"),
        json,
        "round trip changed the state"
    );
});
