//! Several payloads in one broker message. Under load a broker adapter groups concurrent
//! publishes into one persistent message and one confirm (group commit), which divides the
//! broker's per-message work — routing, queue index, fsync, confirm, delivery, ack — by the
//! group's size. Each payload still gets its own `Delivery` and is settled on its own.
//!
//! Format: for each payload, its length as a big-endian u32, then its bytes; a body of at
//! least `COMPRESS_FROM` bytes is then LZ4-compressed (block format, the decoded length
//! first as a little-endian u32) when that makes it smaller, and the broker message says so
//! in its content encoding (`LZ4`). A broker message holding a single payload is sent bare
//! (no envelope, never compressed), so lone items, retries and dead letters stay readable
//! with any broker tool.

/// The content encoding of a compressed envelope.
pub const LZ4: &str = "lz4";
/// Smaller bodies go uncompressed: too little to gain.
pub const COMPRESS_FROM: usize = 1024;
/// The most a compressed envelope may claim to decode to; a larger claim is malformed (the
/// claim sizes the buffer, so it must not be trusted blindly).
const DECODED_MAX: usize = 64 * 1024 * 1024;

/// The payloads framed into one body, and its content encoding (`None` when uncompressed).
pub fn encode<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Option<&'static str>) {
    let mut body = Vec::new();
    for payload in payloads {
        let len = u32::try_from(payload.len()).expect("a payload is far below 4 GiB");
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(payload);
    }
    if body.len() >= COMPRESS_FROM {
        let compressed = lz4_flex::block::compress_prepend_size(&body);
        if compressed.len() < body.len() {
            return (compressed, Some(LZ4));
        }
    }
    (body, None)
}

/// The payloads of a body made by `encode`, given its content encoding; `None` when it is
/// malformed (an unknown encoding, a compressed body that does not decompress, truncated, or
/// not exactly `count` payloads).
pub fn decode(body: &[u8], count: usize, encoding: Option<&str>) -> Option<Vec<Vec<u8>>> {
    match encoding {
        None => split(body, count),
        Some(LZ4) => {
            let (len, block) = body.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
            if len > DECODED_MAX {
                return None;
            }
            let framed = lz4_flex::block::decompress(block, len).ok()?;
            split(&framed, count)
        }
        Some(_) => None,
    }
}

fn split(body: &[u8], count: usize) -> Option<Vec<Vec<u8>>> {
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

    /// Chat lines, all different: real text compresses worse than the benchmark's vocabulary.
    const LINES: [&str; 24] = [
        "are we still on for the release review at four, or did that move to tomorrow?",
        "I pushed the fix for the flaky login test; CI is green again on my branch",
        "Can someone with prod access check why the nightly export took 3h this time?",
        "lunch? the new ramen place opened across the street, they have a vegan broth",
        "Merged. Thanks for the thorough review, the retry logic reads much better now",
        "heads up: staging is down for maintenance from 22:00 to 23:30 UTC tonight",
        "ok",
        "Which dashboard shows the queue depth per region? Grafana has three of them",
        "my flight got cancelled so I'll join remotely, sorry for the late notice!",
        "the invoice PDF renders the totals twice when a discount code is applied",
        "Does anybody remember the password policy we agreed on with the auditors?",
        "yes, 14 characters minimum and no forced rotation, it's in the wiki under IT",
        "Thanks! Found it.",
        "Quick poll for the offsite: hiking on Saturday morning or the museum instead",
        "hiking, as long as it doesn't rain like last year",
        "I can bring the projector and the long HDMI cable, someone else grab snacks",
        "Customer #4471 says exports fail with a timeout after exactly 30 seconds",
        "that is the load balancer's idle timeout, we raised it to 120s on the others",
        "Reminder: quarterly planning docs are due Friday, please link them here",
        "who broke the coffee machine again? it only makes hot water now 😅",
        "New hire starts Monday: Priya, backend, she'll sit with the payments team",
        "welcome Priya! 👋",
        "Rolling back 2.14.1, the migration locks the orders table for too long",
        "rollback done at 14:32, error rate is back to baseline, postmortem tomorrow",
    ];

    /// `n` `create_messages` payloads as the api writes them.
    fn message_events(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!(
                    r#"{{"token":"f3Qm9ZkR2xWbT7yLpC4vNa8s","chatNumber":17,"messageNumber":{},"senderId":{},"body":"{}","createdAt":{}}}"#,
                    48_211 + i,
                    1_000 + i % 7,
                    LINES[i % LINES.len()],
                    1_765_100_000_123u64 + 37_411 * i as u64,
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn payloads_round_trip_including_empty_ones() {
        let payloads: [&[u8]; 3] = [b"first", b"", b"third one"];
        let (body, encoding) = encode(payloads);
        assert_eq!(encoding, None, "too small to compress");
        assert_eq!(
            decode(&body, 3, encoding).unwrap(),
            payloads.map(<[u8]>::to_vec)
        );
    }

    #[test]
    fn a_busy_envelope_is_compressed_below_the_brokers_embedding_threshold() {
        // RabbitMQ keeps a message under 4,096 bytes in its queue index and syncs a larger
        // one to its message store as well: 23 items is an envelope at 64 connections.
        let payloads = message_events(23);
        let framed: usize = payloads.iter().map(|p| 4 + p.len()).sum();
        let (body, encoding) = encode(payloads.iter().map(Vec::as_slice));
        assert_eq!(encoding, Some(LZ4));
        assert!(
            body.len() < 4096 && framed > 4096,
            "{framed} bytes framed, {} compressed",
            body.len()
        );
        assert_eq!(decode(&body, 23, encoding).unwrap(), payloads);
    }

    #[test]
    fn an_incompressible_envelope_goes_as_it_is() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..3000)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        let (body, encoding) = encode([&noise[..1500], &noise[1500..]]);
        assert_eq!(encoding, None);
        assert_eq!(body.len(), 3008);
        assert_eq!(
            decode(&body, 2, None).unwrap(),
            [&noise[..1500], &noise[1500..]]
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let (body, _) = encode([&b"abc"[..], b"defg"]);
        assert_eq!(decode(&body, 3, None), None, "wrong count");
        assert_eq!(
            decode(&body[..body.len() - 1], 2, None),
            None,
            "truncated payload"
        );
        assert_eq!(decode(&body[..5], 1, None), None, "truncated payload");
        assert_eq!(decode(&[0, 0, 1], 1, None), None, "truncated length");
        assert_eq!(decode(b"", 0, None), Some(vec![]));
        assert_eq!(decode(&body, 2, Some("gzip")), None, "unknown encoding");
    }

    #[test]
    fn malformed_compressed_bodies_are_refused() {
        let payloads = message_events(10);
        let (body, encoding) = encode(payloads.iter().map(Vec::as_slice));
        assert_eq!(encoding, Some(LZ4));
        assert_eq!(decode(&body, 10, encoding).unwrap(), payloads);
        assert_eq!(decode(&body, 9, encoding), None, "wrong count");
        assert_eq!(
            decode(&body[..body.len() - 1], 10, encoding),
            None,
            "truncated"
        );
        assert_eq!(decode(&body[..3], 10, encoding), None, "no length");
        let mut claims_more = body.clone();
        claims_more[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&claims_more, 10, encoding),
            None,
            "implausible length"
        );
        let mut claims_less = body.clone();
        claims_less[..4].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(decode(&claims_less, 10, encoding), None, "length too short");
        assert_eq!(decode(b" \0\0\0garbage!", 1, encoding), None, "not LZ4");
    }
}
