//! ChannelData messages: TURN's 4-byte-header framing for channel traffic.

/// Lowest channel number a client may bind. See RFC 8656, section 12.
pub const MIN_CHANNEL: u16 = 0x4000;
/// Highest channel number a client may bind: 0x7FFE.
///
/// RFC 8656 (section 12) narrowed the range to 0x4000-0x4FFF, but RFC 5766
/// (section 11) allowed 0x4000-0x7FFE and deployed clients, coturn's
/// `turnutils_uclient` among them, still pick channels above 0x4FFF. Over TURN's
/// own port nothing else starts with 0x50-0x7F, so turnd accepts the RFC 5766
/// range as coturn does; 0x7FFF and everything outside 0x4000 stays a 400.
pub const MAX_CHANNEL: u16 = 0x7FFE;
/// Length of the ChannelData header in bytes.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A ChannelData message borrowing its bytes.
///
/// Wire layout (RFC 8656, section 12.4): channel number (2 bytes, 0x4000-0x7FFE, see [`MAX_CHANNEL`]),
/// length (2 bytes, of the application data), application data. Over UDP the
/// datagram may carry padding after the data; over TCP the message is padded
/// to a multiple of 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    channel: u16,
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
    /// The channel number is outside 0x4000-0x7FFE.
    #[error("channel number {0:#06x} outside 0x4000-0x7ffe")]
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
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&channel) {
            return Err(ChannelDataError::BadChannel(channel));
        }
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
        assert_eq!(
            ChannelData::parse(&b),
            Err(ChannelDataError::BadChannel(0x7fff))
        );
        b[0] = 0x3f;
        assert_eq!(
            ChannelData::parse(&b),
            Err(ChannelDataError::BadChannel(0x3fff))
        );
    }
}
