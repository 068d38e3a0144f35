//! ChannelData messages: TURN's 4-byte-header framing for channel traffic.

/// Lowest channel number a client may bind. See RFC 8656, section 12.
pub const MIN_CHANNEL: u16 = 0x4000;
/// Highest channel number a client may bind: 0x7FFF.
///
/// RFC 8656 (section 12) narrowed the range to 0x4000-0x4FFF, but RFC 5766
/// (section 11) allowed 0x4000-0x7FFF and deployed clients, coturn's
/// `turnutils_uclient` among them, still pick channels above 0x4FFF. Over TURN's
/// own port nothing else starts with 0x50-0x7F, so turnd accepts the RFC 5766
/// range as coturn does (its `STUN_VALID_CHANNEL`); everything outside
/// 0x4000-0x7FFF stays a 400.
pub const MAX_CHANNEL: u16 = 0x7FFF;
/// Length of the ChannelData header in bytes.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A ChannelData message borrowing its bytes.
///
/// Wire layout (RFC 8656, section 12.4): channel number (2 bytes, 0x4000-0x7FFF, see [`MAX_CHANNEL`]),
/// length (2 bytes, of the application data), application data. Over UDP the
/// datagram may carry padding after the data; over TCP the message is padded
/// to a multiple of 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    channel: super::ChannelNumber,
    data: &'a [u8],
}

/// Why bytes could not be read as a ChannelData message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    /// Fewer than 4 bytes, or the length field runs past the buffer.
    #[error("channel data truncated: need {need} bytes, got {got}")]
    Truncated {
        /// Bytes the header says the message has.
        need: usize,
        /// Bytes available.
        got: usize,
    },
    /// The channel number is outside 0x4000-0x7FFF.
    #[error("channel number {0:#06x} outside 0x4000-0x7fff")]
    BadChannel(u16),
}

impl<'a> ChannelData<'a> {
    /// Reads a ChannelData message from the start of `buf`.
    ///
    /// # Errors
    /// [`ChannelDataError`] when truncated or the channel is out of range.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, ChannelDataError> {
        if buf.len() < CHANNEL_DATA_HEADER_LEN {
            return Err(ChannelDataError::Truncated {
                need: CHANNEL_DATA_HEADER_LEN,
                got: buf.len(),
            });
        }
        let number = u16::from_be_bytes([buf[0], buf[1]]);
        let Some(channel) = super::ChannelNumber::new(number) else {
            return Err(ChannelDataError::BadChannel(number));
        };
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let end = CHANNEL_DATA_HEADER_LEN + len;
        match buf.get(CHANNEL_DATA_HEADER_LEN..end) {
            Some(data) => Ok(ChannelData { channel, data }),
            None => Err(ChannelDataError::Truncated {
                need: end,
                got: buf.len(),
            }),
        }
    }

    /// The channel number.
    #[inline]
    pub fn channel(&self) -> u16 {
        self.channel.get()
    }

    /// The channel number as a [`ChannelNumber`](super::ChannelNumber) (its
    /// range was checked by [`ChannelData::parse`]).
    #[inline]
    pub fn channel_number(&self) -> super::ChannelNumber {
        self.channel
    }

    /// The application data (without header or padding).
    #[inline]
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// Writes a ChannelData header for `channel` and `len` bytes of data into `buf[0..4]`.
///
/// # Panics
/// When `buf` is shorter than 4 bytes or `len` exceeds 65535; callers reserve
/// the headroom and cap the data.
#[inline]
pub fn write_channel_data_header(buf: &mut [u8], channel: u16, len: usize) {
    debug_assert!(len <= u16::MAX as usize);
    buf[0..2].copy_from_slice(&channel.to_be_bytes());
    buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_write() {
        let mut b = [0u8; 12];
        write_channel_data_header(&mut b, 0x4001, 5);
        b[4..9].copy_from_slice(b"hello");
        let cd = ChannelData::parse(&b).unwrap();
        assert_eq!(cd.channel(), 0x4001);
        assert_eq!(cd.data(), b"hello");
        assert!(matches!(
            ChannelData::parse(&b[..8]),
            Err(ChannelDataError::Truncated { .. })
        ));
        b[0] = 0x50;
        assert_eq!(ChannelData::parse(&b).unwrap().channel(), 0x5001);
        b[0] = 0x7f;
        b[1] = 0xff;
        assert_eq!(ChannelData::parse(&b).unwrap().channel(), 0x7fff);
        b[0] = 0x80;
        b[1] = 0x00;
        assert_eq!(
            ChannelData::parse(&b),
            Err(ChannelDataError::BadChannel(0x8000))
        );
        b[0] = 0x3f;
        b[1] = 0xff;
        assert_eq!(
            ChannelData::parse(&b),
            Err(ChannelDataError::BadChannel(0x3fff))
        );
    }
}

/// Largest frame accepted on a stream (bytes): a STUN message or a
/// ChannelData message with its header and padding.
pub const MAX_STREAM_FRAME: usize = 4 + 65_535 + 3;

/// Why bytes on a TCP/TLS stream cannot be framed: the connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first two bits are neither 00 (STUN) nor 01 (ChannelData).
    #[error("stream carries neither STUN nor ChannelData (first byte {0:#04x})")]
    Garbage(u8),
    /// A STUN length that is not a multiple of 4.
    #[error("stun message length {0} is not a multiple of 4")]
    Unaligned(usize),
}

/// The length of the frame at the start of a TCP/TLS stream buffer, or
/// `Ok(None)` when more bytes are needed.
///
/// STUN: 20 + the header's length. ChannelData: 4 + length, padded to a
/// multiple of 4 as RFC 8656 section 12.5 requires over streams (the
/// padding bytes are part of the frame and ignored).
///
/// # Errors
/// [`FrameError`] when the stream is not TURN: the caller closes the connection.
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let total = match buf[0] >> 6 {
        0 => {
            if len % 4 != 0 {
                return Err(FrameError::Unaligned(len));
            }
            20 + len
        }
        1 => CHANNEL_DATA_HEADER_LEN + ((len + 3) & !3),
        _ => return Err(FrameError::Garbage(buf[0])),
    };
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn frames_stun_and_padded_channel_data() {
        let stun = [
            0u8, 1, 0, 4, 0x21, 0x12, 0xA4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(stream_frame_len(&stun), Ok(Some(24)));
        assert_eq!(stream_frame_len(&stun[..23]), Ok(None));
        assert_eq!(
            stream_frame_len(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0]),
            Ok(None)
        );
        assert_eq!(
            stream_frame_len(&[0x40, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0, 9]),
            Ok(Some(12))
        );
        assert_eq!(stream_frame_len(&[0x40, 0, 0, 0]), Ok(Some(4)));
        assert_eq!(
            stream_frame_len(&[0x80, 0, 0, 0]),
            Err(FrameError::Garbage(0x80))
        );
        assert_eq!(
            stream_frame_len(&[0, 1, 0, 3]),
            Err(FrameError::Unaligned(3))
        );
        assert_eq!(stream_frame_len(&[0x40]), Ok(None));
    }
}
