//! A state-directory index entry with arbitrary content: `index_store::decode` must refuse it
//! or return an index the planner can use without a panic or an out-of-range seek.
//!
//! The entry's magic, version and CRC are put in front of the fuzzer's bytes here, so that
//! mutations reach the parser rather than stopping at the checksum; the first 16 bytes of the
//! body are the content key the entry claims, and the lookups are driven by the same bytes.
#![no_main]

use framesrv::engine::index_store::{self, ContentKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Some(key) = body.get(..16) else { return };
    let key = ContentKey(key.try_into().unwrap());
    let mut entry = index_store::entry_head(body);
    entry.extend_from_slice(body);
    if let Some(index) = index_store::decode(&entry, &key) {
        framesrv_fuzz::check_queries(&index, body);
        // What loads, saves and loads back the same.
        let again = index_store::decode(&index_store::encode(&index, &key), &key).expect("a loaded index must save");
        assert_eq!(again.frames, index.frames);
        assert_eq!(again.seek_points, index.seek_points);
    }
});
