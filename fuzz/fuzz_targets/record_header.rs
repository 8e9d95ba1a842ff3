#![no_main]
//! The record layer as a receiver sees it: a byte stream of headers and sealed records. The
//! input chooses the records' sizes and contents and at most one flipped bit on the wire; the
//! stream must open back to exactly the records sent, up to the flipped one, and never past it.
use deaddrop::protocol::record::{
    HEADER_LEN, MAX_PLAINTEXT, Opener, Sealer, TAG_LEN, key_pair_for_fuzzing, parse_header,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Any four bytes as a header: a length within the cap, or an error.
    if let Some(h) = data.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok())
        && let Ok((len, _)) = parse_header(h)
    {
        assert!((TAG_LEN..=MAX_PLAINTEXT + TAG_LEN).contains(&len));
    }
    let Some((&flip, mut rest)) = data.split_first() else {
        return;
    };
    // Records: a length byte, then that many bytes of plaintext (fewer at the end).
    let (send, recv) = key_pair_for_fuzzing([7; 32]);
    let mut sealer = Sealer::new(send);
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    while let Some((&n, tail)) = rest.split_first() {
        let n = usize::from(n).min(tail.len());
        let (plain, tail) = tail.split_at(n);
        let mut frame = vec![0u8; HEADER_LEN];
        frame.extend_from_slice(plain);
        let last = tail.is_empty();
        sealer.seal(&mut frame, last).unwrap();
        sent.push((wire.len(), plain.to_vec()));
        wire.extend_from_slice(&frame);
        rest = tail;
    }
    // At most one bit flipped, somewhere on the wire.
    let flipped = (flip & 1 == 1 && !wire.is_empty()).then(|| {
        let at = usize::from(flip >> 1) * 7919 % wire.len();
        wire[at] ^= 1 << (flip % 8);
        at
    });
    let mut opener = Opener::new(recv);
    let mut pos = 0;
    let mut opened = 0;
    while pos + HEADER_LEN <= wire.len() {
        let header: [u8; 4] = wire[pos..pos + HEADER_LEN].try_into().unwrap();
        let Ok((len, last)) = parse_header(header) else { break };
        let start = pos + HEADER_LEN;
        let Some(body) = wire.get_mut(start..start + len) else { break };
        let Ok(plain) = opener.open(body, last) else { break };
        assert_eq!(plain, &sent[opened].1[..], "record {opened} opened to other bytes");
        opened += 1;
        pos = start + len;
    }
    match flipped {
        None => assert_eq!(opened, sent.len(), "an untouched stream opens whole"),
        Some(at) => {
            // Everything before the flipped record opens; nothing from it on.
            let hit = sent.iter().rposition(|(offset, _)| *offset <= at).unwrap();
            assert_eq!(opened, hit, "a flipped bit at {at} was not caught in record {hit}");
        }
    }
});
