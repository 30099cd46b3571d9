//! The config parser over arbitrary text: a config is refused with a message that names its
//! line, or accepted; one that also passes `validate` must give the daemon its settings (store
//! config, timeouts, state directory) without a panic.
#![no_main]

use framesrv::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match Config::parse(text) {
        Err(message) => assert!(!message.is_empty()),
        Ok(config) => {
            if config.validate().is_ok() {
                let _ = config.store_config();
                let _ = (config.request_timeout(), config.shutdown_grace(), config.shutdown_delay());
                let _ = (config.state_dir(), config.replica_name());
            }
        }
    }
});
