//! What an agent does with a watch reply (`protocol::Update`): arbitrary bytes are read as
//! the reply; a delta is applied to the default config. Never a panic; what applies either
//! validates or is refused with a reason; and a result that validates obeys the delta law
//! (`between(base, result)` applied to `base` gives `result` again).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sockmesh_model::protocol::Update;
use sockmesh_model::{default_config, ConfigDelta};

fuzz_target!(|input: &[u8]| {
    let Ok(update) = serde_json::from_slice::<Update<serde_json::Value>>(input) else {
        return;
    };
    let Update::Delta(update) = update else {
        return;
    };
    let base = default_config();
    let Ok(result) = update.delta.apply(base.clone()) else {
        return;
    };
    let _ = result.fingerprint();
    if result.validate().is_err() {
        return;
    }
    if let Some(again) = ConfigDelta::between(&base, &result) {
        assert_eq!(again.apply(base).expect("its own delta fits"), result);
    }
});
