//! Several payloads in one broker message. Under load a broker adapter groups concurrent
//! publishes into one persistent message and one confirm (group commit), which divides the
//! broker's per-message work — routing, queue index, fsync, confirm, delivery, ack — by the
//! group's size. Each payload still gets its own `Delivery` and is settled on its own.
//!
//! Format: for each payload, its length as a big-endian u32, then its bytes. A broker message
//! holding a single payload is sent bare (no envelope), so lone items, retries and dead
//! letters stay readable with any broker tool.

/// The payloads framed into one body.
pub fn encode<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    for payload in payloads {
        let len = u32::try_from(payload.len()).expect("a payload is far below 4 GiB");
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(payload);
    }
    body
}

/// The payloads of a body made by `encode`; `None` when it is malformed (truncated, or not
/// exactly `count` payloads).
pub fn decode(body: &[u8], count: usize) -> Option<Vec<Vec<u8>>> {
    let mut payloads = Vec::with_capacity(count.min(body.len() / 4));
    let mut rest = body;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if tail.len() < len {
            return None;
        }
        let (payload, tail) = tail.split_at(len);
        payloads.push(payload.to_vec());
        rest = tail;
    }
    (payloads.len() == count).then_some(payloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_including_empty_ones() {
        let payloads: [&[u8]; 3] = [b"first", b"", b"third one"];
        let body = encode(payloads);
        assert_eq!(decode(&body, 3).unwrap(), payloads.map(<[u8]>::to_vec));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let body = encode([&b"abc"[..], b"defg"]);
        assert_eq!(decode(&body, 3), None, "wrong count");
        assert_eq!(
            decode(&body[..body.len() - 1], 2),
            None,
            "truncated payload"
        );
        assert_eq!(decode(&body[..5], 1), None, "truncated payload");
        assert_eq!(decode(&[0, 0, 1], 1), None, "truncated length");
        assert_eq!(decode(b"", 0), Some(vec![]));
    }
}
