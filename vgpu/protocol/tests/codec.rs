//! The decoder against arbitrary input (the fuzz target's checks, as a property test that runs
//! in CI): every message round-trips; truncated, extended, oversized and random frames are
//! errors, never panics.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use proptest::prelude::*;
use tf_hal::ErrorKind;
use tf_remote_protocol::wire::{
    Args, HEADER_LEN, Header, MAX_DATA, MAX_MSG, Msg, ProtocolError, U32List, decode_frame,
};

fn frame(msg: &Msg<'_>, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    msg.frame(data.len(), &mut v);
    v.extend_from_slice(data);
    v
}

/// A sample of every shape of message, with the values proptest picks.
fn messages<'a>(n: u64, b: &'a [u8], s: &'a str, sizes: &[u32]) -> Vec<(Msg<'a>, &'a [u8])> {
    let x = n as u32;
    vec![
        (
            Msg::Hello {
                version: x as u16,
                token: b,
            },
            &[][..],
        ),
        (
            Msg::Welcome {
                version: 1,
                worker: s,
                vram_quota: n,
            },
            &[],
        ),
        (
            Msg::Refused {
                reason: 2,
                message: s,
            },
            &[],
        ),
        (Msg::Devices {}, &[]),
        (
            Msg::DeviceUtilization {
                device: x,
                window_ns: n,
            },
            &[],
        ),
        (Msg::ContextCreate { ctx: n, device: x }, &[]),
        (
            Msg::MemAlloc {
                ctx: n,
                bytes: n ^ 7,
            },
            &[],
        ),
        (
            Msg::CopyHtoD {
                ctx: n,
                stream: 0,
                dst: n,
                flags: 3,
            },
            b,
        ),
        (
            Msg::CopyDtoH {
                ctx: n,
                stream: 1,
                src: n,
                len: n,
                flags: 0,
            },
            &[],
        ),
        (
            Msg::Memset {
                ctx: 1,
                stream: 2,
                dst: n,
                value: x,
                width: 4,
                count: n,
                flags: 1,
            },
            &[],
        ),
        (
            Msg::ModuleLoad {
                ctx: 1,
                module: n,
                format: 0,
                flags: 0,
            },
            b,
        ),
        (
            Msg::FunctionGet {
                ctx: 1,
                module: 2,
                function: n,
                name: s,
            },
            &[],
        ),
        (
            Msg::Launch {
                ctx: n,
                function: 3,
                stream: 4,
                grid: [x, 1, 2],
                block: [3, x, 5],
                shared: x,
                args: Args(vec![b, &b[..b.len() / 2], &[]]),
            },
            &[],
        ),
        (
            Msg::EventElapsed {
                ctx: 1,
                start: n,
                end: 3,
            },
            &[],
        ),
        (
            Msg::Failed {
                kind: ErrorKind::OutOfMemory,
                code: -(n as i64),
                vendor: s,
                message: s,
            },
            &[],
        ),
        (
            Msg::Params {
                known: true,
                sizes: U32List(sizes.to_vec()),
            },
            &[],
        ),
        (Msg::Data {}, b),
        (Msg::Pong { n }, &[]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(
        n in any::<u64>(),
        b in proptest::collection::vec(any::<u8>(), 0..300),
        s in ".{0,40}",
        sizes in proptest::collection::vec(any::<u32>(), 0..20),
    ) {
        for (m, d) in messages(n, &b, &s, &sizes) {
            let f = frame(&m, d);
            let (back, data) = decode_frame(&f).expect("a frame we encoded decodes");
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(data, d);
            // Every strict prefix is an error (truncated), and so is one byte more.
            for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, f.len() / 2, f.len() - 1] {
                if cut < f.len() {
                    prop_assert!(decode_frame(&f[..cut]).is_err(), "{} cut at {cut}", m.name());
                }
            }
            let mut longer = f.clone();
            longer.push(0);
            prop_assert!(decode_frame(&longer).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_frame(&b);
    }

    #[test]
    fn random_bodies_behind_valid_headers_never_panic(
        tag in prop_oneof![1u16..4, 10u16..16, 20u16..24, 30u16..36, 40u16..44, 50u16..55,
                           60u16..66, 70u16..71, 100u16..109, any::<u16>()],
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let h = Header { tag, msg_len: body.len() as u32, data_len: 0 }.encode();
        let mut f = h.to_vec();
        f.extend_from_slice(&body);
        let _ = decode_frame(&f);
    }

    /// A message field that claims more bytes than the frame holds is refused before anything
    /// is allocated for it.
    #[test]
    fn lengths_past_the_frame_are_truncations(claim in 1u32.., have in 0usize..64) {
        let mut body = 1u16.to_le_bytes().to_vec(); // Hello's version
        body.extend_from_slice(&claim.saturating_add(have as u32).to_le_bytes());
        body.extend(std::iter::repeat_n(7u8, have));
        let f = frame_raw(1, &body, &[]);
        let truncated = matches!(decode_frame(&f), Err(ProtocolError::Truncated { .. }));
        prop_assert!(truncated, "a length past the frame must be a truncation");
    }
}

fn frame_raw(tag: u16, body: &[u8], data: &[u8]) -> Vec<u8> {
    let mut f = Header {
        tag,
        msg_len: body.len() as u32,
        data_len: data.len() as u32,
    }
    .encode()
    .to_vec();
    f.extend_from_slice(body);
    f.extend_from_slice(data);
    f
}

#[test]
fn oversized_and_foreign_headers_are_refused() {
    let over_msg = Header {
        tag: 10,
        msg_len: MAX_MSG as u32 + 1,
        data_len: 0,
    }
    .encode();
    assert_eq!(
        Header::decode(&over_msg),
        Err(ProtocolError::MessageTooLong(MAX_MSG as u32 + 1))
    );
    let over_data = Header {
        tag: 32,
        msg_len: 0,
        data_len: MAX_DATA as u32 + 1,
    }
    .encode();
    assert_eq!(
        Header::decode(&over_data),
        Err(ProtocolError::DataTooLong(MAX_DATA as u32 + 1))
    );
    let huge = Header {
        tag: 32,
        msg_len: u32::MAX,
        data_len: u32::MAX,
    }
    .encode();
    assert!(Header::decode(&huge).is_err());
    let mut http = *b"GET / HTTP/1";
    assert!(matches!(
        Header::decode(&http),
        Err(ProtocolError::BadMagic(_))
    ));
    http[0..2].copy_from_slice(&0x5446u16.to_le_bytes());
    assert!(matches!(
        Header::decode(&http),
        Err(ProtocolError::UnknownTag(_))
    ));
    // Bulk data on a message that has none.
    let data_on_ping = Header {
        tag: 70,
        msg_len: 8,
        data_len: 1,
    }
    .encode();
    assert!(matches!(
        Header::decode(&data_on_ping),
        Err(ProtocolError::UnexpectedData("Ping"))
    ));
}

#[test]
fn bad_field_values_are_refused() {
    // A boolean that is neither 0 nor 1.
    let mut body = vec![2u8];
    body.extend_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        decode_frame(&frame_raw(106, &body, &[])),
        Err(ProtocolError::Invalid { .. })
    ));
    // An error kind out of range.
    let mut body = vec![200u8];
    body.extend_from_slice(&[0u8; 16]);
    assert!(matches!(
        decode_frame(&frame_raw(101, &body, &[])),
        Err(ProtocolError::Invalid { .. })
    ));
    // A string that is not UTF-8.
    let mut body = 1u64.to_le_bytes().to_vec();
    body.extend_from_slice(&2u64.to_le_bytes());
    body.extend_from_slice(&3u64.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[0xff, 0xfe]);
    assert!(matches!(
        decode_frame(&frame_raw(42, &body, &[])),
        Err(ProtocolError::Invalid { .. })
    ));
    // A launch claiming four billion parameters.
    let mut body = vec![0u8; 8 * 3 + 4 * 7];
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_frame(&frame_raw(43, &body, &[])),
        Err(ProtocolError::Invalid { .. })
    ));
}
