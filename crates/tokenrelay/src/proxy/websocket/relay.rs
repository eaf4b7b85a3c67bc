//! After the `101`: bytes relayed both ways as they arrive, until either side closes.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frames::{close_frame, FrameTracker, GOING_AWAY};
use super::registry::Ticket;

/// Bytes read from one side before they are written to the other (16 KiB): a read returns
/// what has arrived, so a small event goes on at once and a large one in a few writes.
const RELAY_BUFFER: usize = 16 * 1024;

/// How long the other direction may go on after one side closed its direction (2 s): the
/// close handshake is over by then (the server closes the TCP connection after the close
/// frames crossed, RFC 6455 §7.1.1), and a peer that keeps its half open must not hold the
/// socket.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long writing the close frames may take when the proxy ends a socket (1 s).
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// One direction's state, kept outside its pump so that it can be read after the pump was
/// stopped.
#[derive(Debug, Default)]
struct Direction {
    frames: FrameTracker,
    /// A write was under way when the pump stopped: the frame boundary is lost.
    writing: bool,
    /// The reader ended and the writer was shut down.
    ended: bool,
}

impl Direction {
    /// Whether a close frame can be written now without cutting a frame.
    fn between_frames(&self) -> bool {
        !self.writing && !self.ended && self.frames.at_boundary()
    }
}

/// Copies `r` to `w` as bytes arrive; at the end of `r`, shuts `w` down.
async fn pump<R, W>(r: &mut R, w: &mut W, d: &mut Direction) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            d.ended = true;
            return w.shutdown().await;
        }
        d.writing = true;
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        d.frames.feed(&buf[..n]);
        d.writing = false;
    }
}

/// Why the proxy itself ended a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Shutdown,
    Lifetime,
}

impl Ending {
    fn reason(self) -> &'static str {
        match self {
            Ending::Shutdown => "tokenrelay is shutting down",
            Ending::Lifetime => "tokenrelay: max_socket_lifetime reached",
        }
    }
}

/// Relays between the client's and the upstream's upgraded connections until both directions
/// ended, either failed, the socket reached its `max_socket_lifetime`, or the shutdown grace
/// ended; in the last two cases each side gets a close frame (1001) when the proxy is between
/// two frames in that direction (else its connection is just closed). `ticket` counts the
/// socket as open for as long as this runs.
pub(crate) async fn relay(client: OnUpgrade, upstream: OnUpgrade, ticket: Ticket, provider: &str) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (TokioIo::new(c), TokioIo::new(u)),
        (c, u) => {
            let e = c
                .err()
                .or(u.err())
                .map(|e| e.to_string())
                .unwrap_or_default();
            tracing::debug!(provider, error = %e, "WebSocket upgrade failed");
            return;
        }
    };
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let (mut up, mut down) = (Direction::default(), Direction::default());
    let mut closing = ticket.shutdown_signal();
    let lifetime = ticket.max_lifetime();
    let ending = {
        let both = async {
            let to_upstream = pump(&mut cr, &mut uw, &mut up);
            let to_client = pump(&mut ur, &mut cw, &mut down);
            tokio::pin!(to_upstream, to_client);
            tokio::select! {
                r = &mut to_upstream => {
                    r?;
                    tokio::time::timeout(HALF_CLOSE_LINGER, to_client).await.ok().transpose()?;
                }
                r = &mut to_client => {
                    r?;
                    tokio::time::timeout(HALF_CLOSE_LINGER, to_upstream).await.ok().transpose()?;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::select! {
            r = both => {
                if let Err(e) = r {
                    tracing::debug!(provider, error = %e, "WebSocket ended with an error");
                }
                return;
            }
            _ = closing.wait_for(|c| *c) => Ending::Shutdown,
            _ = async {
                match lifetime {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => Ending::Lifetime,
        }
    };
    tracing::info!(
        provider,
        reason = ending.reason(),
        "closing a WebSocket (1001)"
    );
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
        if down.between_frames() {
            let _ = cw
                .write_all(&close_frame(GOING_AWAY, ending.reason(), None))
                .await;
        }
        if up.between_frames() {
            let mask = rand::random::<[u8; 4]>();
            let _ = uw
                .write_all(&close_frame(GOING_AWAY, ending.reason(), Some(mask)))
                .await;
        }
        let _ = tokio::join!(cw.shutdown(), uw.shutdown());
    })
    .await;
    drop(ticket);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn pump_copies_and_tracks_frames_then_shuts_down() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let (mut c, mut d) = tokio::io::duplex(64);
        let mut dir = Direction::default();
        let writer = tokio::spawn(async move {
            a.write_all(&[0x81, 3, b'a', b'b', b'c']).await.unwrap();
            a.write_all(&[0x81, 2, b'x']).await.unwrap();
            a.write_all(b"y").await.unwrap();
            a.shutdown().await.unwrap();
        });
        let copied = tokio::spawn(async move {
            let mut got = Vec::new();
            d.read_to_end(&mut got).await.unwrap();
            got
        });
        pump(&mut b, &mut c, &mut dir).await.unwrap();
        writer.await.unwrap();
        drop(c);
        assert_eq!(copied.await.unwrap(), b"\x81\x03abc\x81\x02xy");
        assert!(dir.frames.at_boundary() && dir.ended && !dir.between_frames());
    }
}
