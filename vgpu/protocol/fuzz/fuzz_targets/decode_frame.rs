//! Any bytes given to the frame decoder yield a message or a `ProtocolError`: never a panic,
//! never an allocation past the protocol's limits. A frame that decodes re-encodes to the same
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tf_remote_protocol::wire::decode_frame;

fuzz_target!(|data: &[u8]| {
    if let Ok((msg, bulk)) = decode_frame(data) {
        let mut again = Vec::new();
        msg.frame(bulk.len(), &mut again);
        again.extend_from_slice(bulk);
        assert_eq!(again, data, "decode then encode changed the frame");
    }
});
