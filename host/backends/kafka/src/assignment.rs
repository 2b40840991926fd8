//! A member's assignment as the consumer protocol encodes it (`ConsumerProtocolAssignment`,
//! every version: int16 version, then [topic: string, partitions: [int32]], then user data we
//! do not read). Read bounded: a malformed or hostile blob yields what was whole before it.

use themis_caps::types::TopicPartition;

/// At most this many partitions are read from one member's assignment.
const MAX_PARTITIONS: usize = 10_000;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Option<String> {
        let len = usize::try_from(self.i16()?).ok()?;
        self.take(len)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

pub fn decode(bytes: &[u8]) -> Vec<TopicPartition> {
    let mut out = Vec::new();
    let mut r = Reader { bytes, at: 0 };
    let _version = r.i16();
    let Some(topics) = r.i32().and_then(|n| usize::try_from(n).ok()) else {
        return out;
    };
    for _ in 0..topics {
        let Some(topic) = r.string() else { break };
        let Some(n) = r.i32().and_then(|n| usize::try_from(n).ok()) else {
            break;
        };
        for _ in 0..n {
            if out.len() >= MAX_PARTITIONS {
                return out;
            }
            let Some(partition) = r.i32() else { return out };
            out.push(TopicPartition {
                topic: topic.clone(),
                partition,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = 1i16.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, parts) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        b
    }

    #[test]
    fn decodes_what_the_consumer_protocol_encodes_and_stops_at_garbage() {
        let bytes = encode(&[("orders", &[0, 3]), ("audit", &[1])]);
        let got = decode(&bytes);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].topic, "audit");
        assert_eq!(got[1].partition, 3);
        // Cut short, or claiming more than it holds: what was whole, nothing invented.
        assert_eq!(decode(&bytes[..bytes.len() - 10]).len(), 2);
        let mut lying = 1i16.to_be_bytes().to_vec();
        lying.extend(i32::MAX.to_be_bytes());
        assert!(decode(&lying).is_empty());
        assert!(decode(&[]).is_empty());
    }
}
