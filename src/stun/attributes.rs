//! Typed accessors and writers for TURN's attributes (RFC 8656 section 18,
//! RFC 6062 section 6.2), so request handlers read fields, not bytes.
//!
//! Accessors return `None` when the attribute is absent and
//! `Some(Err(AttributeError))` when it is present but malformed (wrong
//! length or a value outside its range); the caller picks the error code.

use super::{
    AttributeError, AttributeType, BufferFull, ErrorCode, Message, MessageWriter, MAX_CHANNEL,
    MIN_CHANNEL,
};

/// A channel number a client may bind: 0x4000-0x7FFF (see [`MAX_CHANNEL`]
/// for why the RFC 5766 range). The range is checked once, by
/// [`ChannelNumber::new`]; holding one means it is valid.
///
/// See RFC 8656, sections 12 and 18.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// `number` as a channel number, `None` outside 0x4000-0x7FFF.
    #[inline]
    pub const fn new(number: u16) -> Option<Self> {
        if number >= MIN_CHANNEL && number <= MAX_CHANNEL {
            Some(ChannelNumber(number))
        } else {
            None
        }
    }

    /// The number as on the wire.
    #[inline]
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for ChannelNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// An address family of REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY
/// and ADDRESS-ERROR-CODE: 0x01 IPv4, 0x02 IPv6. See RFC 8656, section 18.10.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// 0x01.
    V4,
    /// 0x02.
    V6,
}

impl AddressFamily {
    /// The family of wire value `v`; `None` for values RFC 8656 does not define.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0x01 => Some(AddressFamily::V4),
            0x02 => Some(AddressFamily::V6),
            _ => None,
        }
    }

    /// The wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            AddressFamily::V4 => 0x01,
            AddressFamily::V6 => 0x02,
        }
    }
}

/// Reads a 4-byte attribute value.
fn four(v: &[u8]) -> Result<[u8; 4], AttributeError> {
    <[u8; 4]>::try_from(v).map_err(|_| AttributeError)
}

impl<'a> Message<'a> {
    /// REQUESTED-TRANSPORT: the IANA protocol number (17 UDP, 6 TCP) in the
    /// first of its 4 bytes (3 reserved). See RFC 8656, section 18.8.
    pub fn requested_transport(&self) -> Option<Result<u8, AttributeError>> {
        self.get(AttributeType::REQUESTED_TRANSPORT)
            .map(|v| four(v).map(|b| b[0]))
    }

    /// DONT-FRAGMENT: `Ok(())` when present with its empty value. See RFC
    /// 8656, section 18.9.
    pub fn dont_fragment(&self) -> Option<Result<(), AttributeError>> {
        self.get(AttributeType::DONT_FRAGMENT).map(|v| {
            if v.is_empty() {
                Ok(())
            } else {
                Err(AttributeError)
            }
        })
    }

    /// EVEN-PORT: one byte whose top bit R asks to reserve the next port
    /// too; `Ok(r)`. See RFC 8656, section 18.6.
    pub fn even_port(&self) -> Option<Result<bool, AttributeError>> {
        self.get(AttributeType::EVEN_PORT).map(|v| match v {
            [b] => Ok(b & 0x80 != 0),
            _ => Err(AttributeError),
        })
    }

    /// RESERVATION-TOKEN: 8 opaque bytes. See RFC 8656, section 18.9.
    pub fn reservation_token(&self) -> Option<Result<[u8; 8], AttributeError>> {
        self.get(AttributeType::RESERVATION_TOKEN)
            .map(|v| <[u8; 8]>::try_from(v).map_err(|_| AttributeError))
    }

    /// REQUESTED-ADDRESS-FAMILY: the family byte of its 4 bytes (3 reserved),
    /// as sent (see [`AddressFamily::from_u8`]): an undefined family is a
    /// different error (440) from a malformed attribute (400). See RFC 8656,
    /// section 18.10.
    pub fn requested_address_family(&self) -> Option<Result<u8, AttributeError>> {
        self.get(AttributeType::REQUESTED_ADDRESS_FAMILY)
            .map(|v| four(v).map(|b| b[0]))
    }

    /// ADDITIONAL-ADDRESS-FAMILY: the family byte of its 4 bytes (only IPv6
    /// is valid there). See RFC 8656, section 18.11.
    pub fn additional_address_family(&self) -> Option<Result<u8, AttributeError>> {
        self.get(AttributeType::ADDITIONAL_ADDRESS_FAMILY)
            .map(|v| four(v).map(|b| b[0]))
    }

    /// LIFETIME in seconds; `None` when absent or not 4 bytes (read as "no
    /// lifetime asked for"). See RFC 8656, section 18.4.
    pub fn lifetime(&self) -> Option<u32> {
        self.get_u32(AttributeType::LIFETIME)
    }

    /// CHANNEL-NUMBER: the number in the first 2 of its 4 bytes (2 RFFU);
    /// an error when not 4 bytes or outside 0x4000-0x7FFF. See RFC 8656,
    /// section 18.1.
    pub fn channel_number(&self) -> Option<Result<ChannelNumber, AttributeError>> {
        self.get(AttributeType::CHANNEL_NUMBER).map(|v| {
            let b = four(v)?;
            ChannelNumber::new(u16::from_be_bytes([b[0], b[1]])).ok_or(AttributeError)
        })
    }

    /// PASSWORD-ALGORITHM: the algorithm number (2 bytes) of its 4 bytes
    /// (then a parameters length, 0: neither defined algorithm has
    /// parameters, so a longer value is an error). See RFC 8489, section 14.11.
    pub fn password_algorithm(&self) -> Option<Result<u16, AttributeError>> {
        self.get(AttributeType::PASSWORD_ALGORITHM)
            .map(|v| four(v).map(|b| u16::from_be_bytes([b[0], b[1]])))
    }

    /// CONNECTION-ID: a 32-bit connection id; `None` when absent or not 4
    /// bytes. See RFC 6062, section 6.2.1.
    pub fn connection_id(&self) -> Option<u32> {
        self.get_u32(AttributeType::CONNECTION_ID)
    }
}

impl MessageWriter<'_> {
    /// Appends REQUESTED-TRANSPORT for IANA protocol `protocol`.
    ///
    /// # Errors
    /// [`BufferFull`] when it does not fit.
    pub fn requested_transport(&mut self, protocol: u8) -> Result<(), BufferFull> {
        self.attribute(AttributeType::REQUESTED_TRANSPORT, &[protocol, 0, 0, 0])
    }

    /// Appends EVEN-PORT, with the R bit when `reserve_next`.
    ///
    /// # Errors
    /// [`BufferFull`] when it does not fit.
    pub fn even_port(&mut self, reserve_next: bool) -> Result<(), BufferFull> {
        self.attribute(
            AttributeType::EVEN_PORT,
            &[if reserve_next { 0x80 } else { 0 }],
        )
    }

    /// Appends RESERVATION-TOKEN.
    ///
    /// # Errors
    /// [`BufferFull`] when it does not fit.
    pub fn reservation_token(&mut self, token: &[u8; 8]) -> Result<(), BufferFull> {
        self.attribute(AttributeType::RESERVATION_TOKEN, token)
    }

    /// Appends REQUESTED-ADDRESS-FAMILY.
    ///
    /// # Errors
    /// [`BufferFull`] when it does not fit.
    pub fn requested_address_family(&mut self, family: AddressFamily) -> Result<(), BufferFull> {
        self.attribute(
            AttributeType::REQUESTED_ADDRESS_FAMILY,
            &[family.to_u8(), 0, 0, 0],
        )
    }

    /// Appends ADDRESS-ERROR-CODE: family (1 byte), reserved (1), class (1),
    /// number (1), no reason phrase. See RFC 8656, section 18.12.
    ///
    /// # Errors
    /// [`BufferFull`] when it does not fit.
    pub fn address_error_code(
        &mut self,
        family: AddressFamily,
        code: ErrorCode,
    ) -> Result<(), BufferFull> {
        self.attribute(
            AttributeType::ADDRESS_ERROR_CODE,
            &[
                family.to_u8(),
                0,
                (code.0 / 100) as u8,
                (code.0 % 100) as u8,
            ],
        )
    }

    /// Appends LIFETIME in seconds.
    ///
    /// # Errors
    /// [`BufferFull`] when it does not fit.
    pub fn lifetime(&mut self, seconds: u32) -> Result<(), BufferFull> {
        self.u32(AttributeType::LIFETIME, seconds)
    }

    /// Appends CHANNEL-NUMBER (2 bytes number, 2 bytes RFFU).
    ///
    /// # Errors
    /// [`BufferFull`] when it does not fit.
    pub fn channel_number(&mut self, channel: ChannelNumber) -> Result<(), BufferFull> {
        let [a, b] = channel.get().to_be_bytes();
        self.attribute(AttributeType::CHANNEL_NUMBER, &[a, b, 0, 0])
    }

    /// Appends CONNECTION-ID.
    ///
    /// # Errors
    /// [`BufferFull`] when it does not fit.
    pub fn connection_id(&mut self, id: u32) -> Result<(), BufferFull> {
        self.u32(AttributeType::CONNECTION_ID, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, MessageType, Method};

    #[test]
    fn channel_number_range_is_checked_once() {
        assert_eq!(ChannelNumber::new(0x3FFF), None);
        assert_eq!(
            ChannelNumber::new(0x4000).map(ChannelNumber::get),
            Some(0x4000)
        );
        assert_eq!(
            ChannelNumber::new(0x7FFF).map(ChannelNumber::get),
            Some(0x7FFF)
        );
        assert_eq!(ChannelNumber::new(0x8000), None);
    }

    #[test]
    fn turn_attributes_round_trip() {
        let mut buf = [0u8; 256];
        let t = MessageType::new(Method::ALLOCATE, Class::Request);
        let mut w = MessageWriter::new(&mut buf, t, [7; 12]).unwrap();
        w.requested_transport(17).unwrap();
        w.even_port(true).unwrap();
        w.reservation_token(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        w.requested_address_family(AddressFamily::V6).unwrap();
        w.address_error_code(AddressFamily::V6, ErrorCode::INSUFFICIENT_CAPACITY)
            .unwrap();
        w.lifetime(600).unwrap();
        w.channel_number(ChannelNumber::new(0x4001).unwrap())
            .unwrap();
        w.connection_id(0xdead_beef).unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.requested_transport(), Some(Ok(17)));
        assert_eq!(m.even_port(), Some(Ok(true)));
        assert_eq!(m.reservation_token(), Some(Ok([1, 2, 3, 4, 5, 6, 7, 8])));
        assert_eq!(m.requested_address_family(), Some(Ok(2)));
        assert_eq!(
            m.get(AttributeType::ADDRESS_ERROR_CODE),
            Some(&[2, 0, 5, 8][..])
        );
        assert_eq!(m.lifetime(), Some(600));
        assert_eq!(m.channel_number(), ChannelNumber::new(0x4001).map(Ok));
        assert_eq!(m.connection_id(), Some(0xdead_beef));
        assert_eq!(m.dont_fragment(), None);
        assert_eq!(m.additional_address_family(), None);
    }

    #[test]
    fn malformed_turn_attributes_are_errors() {
        let mut buf = [0u8; 256];
        let t = MessageType::new(Method::ALLOCATE, Class::Request);
        let mut w = MessageWriter::new(&mut buf, t, [7; 12]).unwrap();
        w.attribute(AttributeType::REQUESTED_TRANSPORT, &[17])
            .unwrap();
        w.attribute(AttributeType::EVEN_PORT, &[0x80, 0]).unwrap();
        w.attribute(AttributeType::RESERVATION_TOKEN, &[1; 7])
            .unwrap();
        w.attribute(AttributeType::DONT_FRAGMENT, &[0]).unwrap();
        w.attribute(AttributeType::CHANNEL_NUMBER, &[0x80, 0, 0, 0])
            .unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.requested_transport(), Some(Err(AttributeError)));
        assert_eq!(m.even_port(), Some(Err(AttributeError)));
        assert_eq!(m.reservation_token(), Some(Err(AttributeError)));
        assert_eq!(m.dont_fragment(), Some(Err(AttributeError)));
        assert_eq!(m.channel_number(), Some(Err(AttributeError)));
    }
}
