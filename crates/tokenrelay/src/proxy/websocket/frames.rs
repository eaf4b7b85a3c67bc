//! The little of RFC 6455 framing the relay needs: where frames end (so that a close frame is
//! only ever written between two frames) and a close frame to write. The relay never decodes,
//! buffers or rewrites the frames it passes on.

/// Follows the frame boundaries of one direction of a WebSocket byte stream, from the frame
/// headers alone: each header says how many payload bytes follow it.
#[derive(Debug, Default, Clone)]
pub(crate) struct FrameTracker {
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The header bytes of the next frame seen so far (a header is 2 to 14 bytes).
    head: [u8; 14],
    head_len: usize,
}

/// The payload length a complete frame header `head` announces, or `None` while the header
/// is incomplete (RFC 6455 §5.2: a 7-bit length, or 126 + 16 bits, or 127 + 64 bits, then a
/// 4-byte masking key when the mask bit is set).
fn payload_len(head: &[u8]) -> Option<u64> {
    let second = *head.get(1)?;
    let len7 = second & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    if head.len() < 2 + ext + mask {
        return None;
    }
    Some(match ext {
        0 => u64::from(len7),
        2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        _ => head[2..10]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    })
}

impl FrameTracker {
    /// Accounts for `data`, the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.payload_left -= n as u64;
                data = &data[n..];
                continue;
            }
            // A header byte (headers are a few bytes: one at a time is enough).
            self.head[self.head_len] = data[0];
            self.head_len += 1;
            data = &data[1..];
            if let Some(len) = payload_len(&self.head[..self.head_len]) {
                self.payload_left = len;
                self.head_len = 0;
            }
        }
    }

    /// Whether the bytes so far end with a whole frame (or there were none).
    pub(crate) fn at_boundary(&self) -> bool {
        self.payload_left == 0 && self.head_len == 0
    }
}

/// Close code 1001, "going away" (RFC 6455 §7.4.1): the proxy is shutting down, or the socket
/// reached `max_socket_lifetime`.
pub(crate) const GOING_AWAY: u16 = 1001;

/// A close frame with `code` and `reason` (cut to the 123 bytes a control frame allows, at a
/// character boundary). Frames to a client are unmasked; frames to a server must be masked
/// (§5.3), with `mask` as the masking key.
pub(crate) fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    // FIN + opcode 8; the payload is at most 125 bytes, so a 7-bit length.
    let mut frame = vec![0x88, payload.len() as u8];
    if let Some(key) = mask {
        frame[1] |= 0x80;
        frame.extend_from_slice(&key);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with `len` payload bytes, masked or not, as a client or server writes it.
    fn frame(len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=0xffff => {
                f.push(m | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_chunking() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (126, true),
            (70_000, false),
        ] {
            stream.extend(frame(len, masked));
        }
        let ends: Vec<usize> = {
            let mut at = 0;
            [
                (0, false),
                (5, true),
                (125, false),
                (126, true),
                (70_000, false),
            ]
            .iter()
            .map(|(len, masked)| {
                at += frame(*len, *masked).len();
                at
            })
            .collect()
        };
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            let mut t = FrameTracker::default();
            let mut fed = 0;
            for piece in stream.chunks(chunk) {
                t.feed(piece);
                fed += piece.len();
                assert_eq!(
                    t.at_boundary(),
                    ends.contains(&fed),
                    "chunk {chunk} at {fed}"
                );
            }
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn a_partial_header_is_not_a_boundary() {
        let mut t = FrameTracker::default();
        assert!(t.at_boundary());
        t.feed(&[0x81]);
        assert!(!t.at_boundary());
        t.feed(&[0xfe, 0x00]); // masked, 16-bit length: header incomplete
        assert!(!t.at_boundary());
        t.feed(&[0x01, 9, 9, 9, 9]); // length 1, mask key
        assert!(!t.at_boundary());
        t.feed(&[0x55]);
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frames_are_well_formed() {
        assert_eq!(close_frame(1001, "", None), [0x88, 2, 0x03, 0xe9]);
        let masked = close_frame(1001, "bye", Some([1, 2, 3, 4]));
        assert_eq!(&masked[..6], &[0x88, 0x85, 1, 2, 3, 4]);
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(unmasked, [0x03, 0xe9, b'b', b'y', b'e']);
        // A long reason is cut to 123 bytes at a character boundary.
        let long = close_frame(1001, &"é".repeat(100), None);
        assert!(long.len() <= 2 + 125);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
        let mut t = FrameTracker::default();
        t.feed(&long);
        assert!(t.at_boundary());
    }
}
