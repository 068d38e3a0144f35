//! Open wire code sets of STUN and TURN as newtypes with constants.

use std::fmt;

/// STUN magic cookie, the fixed value of header bytes 4..8.
/// See RFC 8489, section 5.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// A STUN message method: the 12 method bits of the message type.
///
/// See RFC 8489, section 5 and section 18.2; TURN methods in RFC 8656, section 17.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    /// RFC 8489, section 18.2: Binding.
    pub const BINDING: Method = Method(0x001);
    /// RFC 8656, section 17: Allocate (request/response only).
    pub const ALLOCATE: Method = Method(0x003);
    /// RFC 8656, section 17: Refresh (request/response only).
    pub const REFRESH: Method = Method(0x004);
    /// RFC 8656, section 17: Send (indication only).
    pub const SEND: Method = Method(0x006);
    /// RFC 8656, section 17: Data (indication only).
    pub const DATA: Method = Method(0x007);
    /// RFC 8656, section 17: CreatePermission (request/response only).
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// RFC 8656, section 17: ChannelBind (request/response only).
    pub const CHANNEL_BIND: Method = Method(0x009);
    /// RFC 6062, section 6.1: Connect (request/response only).
    pub const CONNECT: Method = Method(0x00A);
    /// RFC 6062, section 6.1: ConnectionBind (request/response only).
    pub const CONNECTION_BIND: Method = Method(0x00B);
    /// RFC 6062, section 6.1: ConnectionAttempt (indication only).
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);

    /// The RFC name of the method, or `None` for an unknown one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Method::BINDING => "Binding",
            Method::ALLOCATE => "Allocate",
            Method::REFRESH => "Refresh",
            Method::SEND => "Send",
            Method::DATA => "Data",
            Method::CREATE_PERMISSION => "CreatePermission",
            Method::CHANNEL_BIND => "ChannelBind",
            Method::CONNECT => "Connect",
            Method::CONNECTION_BIND => "ConnectionBind",
            Method::CONNECTION_ATTEMPT => "ConnectionAttempt",
            _ => return None,
        })
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Method({:#05x})", self.0),
        }
    }
}

/// The class of a STUN message: two bits spread over the message type.
///
/// See RFC 8489, section 5.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Class {
    /// `0b00`: a request, answered by a success or error response.
    Request,
    /// `0b01`: an indication, never answered.
    Indication,
    /// `0b10`: a success response.
    Success,
    /// `0b11`: an error response.
    Error,
}

/// A STUN message type: method and class, encoded in 14 bits.
///
/// Wire layout (RFC 8489, section 5):
/// `0 0 M11 M10 M9 M8 M7 C1 M6 M5 M4 C0 M3 M2 M1 M0`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MessageType {
    /// The method.
    pub method: Method,
    /// The class.
    pub class: Class,
}

impl MessageType {
    /// Builds a message type from a method and a class.
    pub const fn new(method: Method, class: Class) -> Self {
        MessageType { method, class }
    }

    /// Decodes the 16-bit type field. The two most significant bits must be zero
    /// (the caller checks that); they are ignored here.
    pub fn from_u16(v: u16) -> Self {
        let m = v & 0x3EEF;
        let method = (m & 0x000F) | ((m & 0x00E0) >> 1) | ((m & 0x3E00) >> 2);
        let c = ((v & 0x0010) >> 4) | ((v & 0x0100) >> 7);
        let class = match c {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        MessageType {
            method: Method(method),
            class,
        }
    }

    /// Encodes the 16-bit type field.
    pub fn to_u16(self) -> u16 {
        let m = self.method.0 & 0x0FFF;
        let c: u16 = match self.class {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        };
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }
}

/// A STUN attribute type.
///
/// Types 0x0000-0x7FFF are comprehension-required: a request carrying one the
/// server does not know is rejected with 420. See RFC 8489, section 14 and 18.3;
/// TURN attributes in RFC 8656, section 18.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttributeType(pub u16);

impl AttributeType {
    /// RFC 8489, section 14.1.
    pub const MAPPED_ADDRESS: AttributeType = AttributeType(0x0001);
    /// RFC 8489, section 14.3.
    pub const USERNAME: AttributeType = AttributeType(0x0006);
    /// RFC 8489, section 14.5 (HMAC-SHA1, 20 bytes).
    pub const MESSAGE_INTEGRITY: AttributeType = AttributeType(0x0008);
    /// RFC 8489, section 14.8.
    pub const ERROR_CODE: AttributeType = AttributeType(0x0009);
    /// RFC 8489, section 14.13.
    pub const UNKNOWN_ATTRIBUTES: AttributeType = AttributeType(0x000A);
    /// RFC 8656, section 18.1.
    pub const CHANNEL_NUMBER: AttributeType = AttributeType(0x000C);
    /// RFC 8656, section 18.2 (seconds).
    pub const LIFETIME: AttributeType = AttributeType(0x000D);
    /// RFC 8656, section 18.3.
    pub const XOR_PEER_ADDRESS: AttributeType = AttributeType(0x0012);
    /// RFC 8656, section 18.4.
    pub const DATA: AttributeType = AttributeType(0x0013);
    /// RFC 8489, section 14.9.
    pub const REALM: AttributeType = AttributeType(0x0014);
    /// RFC 8489, section 14.10.
    pub const NONCE: AttributeType = AttributeType(0x0015);
    /// RFC 8656, section 18.5.
    pub const XOR_RELAYED_ADDRESS: AttributeType = AttributeType(0x0016);
    /// RFC 8656, section 18.6.
    pub const REQUESTED_ADDRESS_FAMILY: AttributeType = AttributeType(0x0017);
    /// RFC 8656, section 18.7.
    pub const EVEN_PORT: AttributeType = AttributeType(0x0018);
    /// RFC 8656, section 18.8.
    pub const REQUESTED_TRANSPORT: AttributeType = AttributeType(0x0019);
    /// RFC 8656, section 18.9.
    pub const DONT_FRAGMENT: AttributeType = AttributeType(0x001A);
    /// RFC 8489, section 14.6 (HMAC-SHA256, 16-32 bytes).
    pub const MESSAGE_INTEGRITY_SHA256: AttributeType = AttributeType(0x001C);
    /// RFC 8489, section 14.12: the algorithm the client chose.
    pub const PASSWORD_ALGORITHM: AttributeType = AttributeType(0x001D);
    /// RFC 8489, section 14.4: SHA-256(username ":" realm), for username anonymity.
    pub const USERHASH: AttributeType = AttributeType(0x001E);
    /// RFC 8489, section 14.11: the algorithms the server offers (comprehension-optional).
    pub const PASSWORD_ALGORITHMS: AttributeType = AttributeType(0x8002);
    /// RFC 8489, section 14.2.
    pub const XOR_MAPPED_ADDRESS: AttributeType = AttributeType(0x0020);
    /// RFC 8656, section 18.10.
    pub const RESERVATION_TOKEN: AttributeType = AttributeType(0x0022);
    /// RFC 8445, section 16.1 (ICE; accepted and ignored).
    pub const PRIORITY: AttributeType = AttributeType(0x0024);
    /// RFC 6062, section 6.2: the 32-bit id of a TCP relay connection.
    pub const CONNECTION_ID: AttributeType = AttributeType(0x002A);
    /// RFC 8445, section 16.1 (ICE; accepted and ignored).
    pub const USE_CANDIDATE: AttributeType = AttributeType(0x0025);
    /// RFC 8656, section 18.11 (comprehension-optional).
    pub const ADDITIONAL_ADDRESS_FAMILY: AttributeType = AttributeType(0x8000);
    /// RFC 8656, section 18.12: the error for one family of a dual allocation.
    pub const ADDRESS_ERROR_CODE: AttributeType = AttributeType(0x8001);
    /// RFC 8489, section 14.7.
    pub const SOFTWARE: AttributeType = AttributeType(0x8022);
    /// RFC 8489, section 14.15.
    pub const ALTERNATE_SERVER: AttributeType = AttributeType(0x8023);
    /// RFC 8489, section 14.7 (CRC-32 of the message xor 0x5354554e).
    pub const FINGERPRINT: AttributeType = AttributeType(0x8028);

    /// True for types 0x0000-0x7FFF, which a receiver must understand.
    pub fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    /// True when turnd understands this comprehension-required attribute.
    pub fn is_known(self) -> bool {
        matches!(
            self,
            AttributeType::MAPPED_ADDRESS
                | AttributeType::USERNAME
                | AttributeType::MESSAGE_INTEGRITY
                | AttributeType::ERROR_CODE
                | AttributeType::UNKNOWN_ATTRIBUTES
                | AttributeType::CHANNEL_NUMBER
                | AttributeType::LIFETIME
                | AttributeType::XOR_PEER_ADDRESS
                | AttributeType::DATA
                | AttributeType::REALM
                | AttributeType::NONCE
                | AttributeType::XOR_RELAYED_ADDRESS
                | AttributeType::REQUESTED_ADDRESS_FAMILY
                | AttributeType::EVEN_PORT
                | AttributeType::REQUESTED_TRANSPORT
                | AttributeType::DONT_FRAGMENT
                | AttributeType::XOR_MAPPED_ADDRESS
                | AttributeType::RESERVATION_TOKEN
                | AttributeType::PRIORITY
                | AttributeType::USE_CANDIDATE
                | AttributeType::MESSAGE_INTEGRITY_SHA256
                | AttributeType::PASSWORD_ALGORITHM
                | AttributeType::USERHASH
                | AttributeType::CONNECTION_ID
        )
    }
}

impl fmt::Debug for AttributeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttributeType({:#06x})", self.0)
    }
}

/// A STUN error code: class (hundreds) and number, 300-699.
///
/// Wire layout of ERROR-CODE (RFC 8489, section 14.8): 21 reserved bits, the
/// class in 3 bits, the number in 8 bits, then a UTF-8 reason phrase.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// RFC 8489, section 14.8: Try Alternate.
    pub const TRY_ALTERNATE: ErrorCode = ErrorCode(300);
    /// RFC 8489, section 14.8: Bad Request (malformed request or missing attribute).
    pub const BAD_REQUEST: ErrorCode = ErrorCode(400);
    /// RFC 8489, section 14.8: Unauthenticated (missing or wrong credentials).
    pub const UNAUTHENTICATED: ErrorCode = ErrorCode(401);
    /// RFC 8656, section 18: Forbidden (peer address not allowed).
    pub const FORBIDDEN: ErrorCode = ErrorCode(403);
    /// RFC 8489, section 14.8: Unknown Attribute.
    pub const UNKNOWN_ATTRIBUTE: ErrorCode = ErrorCode(420);
    /// RFC 8656, section 18: Allocation Mismatch.
    pub const ALLOCATION_MISMATCH: ErrorCode = ErrorCode(437);
    /// RFC 8489, section 14.8: Stale Nonce.
    pub const STALE_NONCE: ErrorCode = ErrorCode(438);
    /// RFC 8656, section 18: Address Family not Supported.
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: ErrorCode = ErrorCode(440);
    /// RFC 8656, section 18: Wrong Credentials.
    pub const WRONG_CREDENTIALS: ErrorCode = ErrorCode(441);
    /// RFC 8656, section 18: Unsupported Transport Protocol.
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: ErrorCode = ErrorCode(442);
    /// RFC 6062, section 6.3: Connection Already Exists.
    pub const CONNECTION_ALREADY_EXISTS: ErrorCode = ErrorCode(446);
    /// RFC 6062, section 6.3: Connection Timeout or Failure.
    pub const CONNECTION_TIMEOUT_OR_FAILURE: ErrorCode = ErrorCode(447);
    /// RFC 8656, section 18: Peer Address Family Mismatch.
    pub const PEER_ADDRESS_FAMILY_MISMATCH: ErrorCode = ErrorCode(443);
    /// RFC 8656, section 18: Allocation Quota Reached.
    pub const ALLOCATION_QUOTA_REACHED: ErrorCode = ErrorCode(486);
    /// RFC 8489, section 14.8: Server Error.
    pub const SERVER_ERROR: ErrorCode = ErrorCode(500);
    /// RFC 8656, section 18: Insufficient Capacity (no relay port left).
    pub const INSUFFICIENT_CAPACITY: ErrorCode = ErrorCode(508);

    /// The RFC's reason phrase for this code.
    pub fn reason(self) -> &'static str {
        match self.0 {
            300 => "Try Alternate",
            400 => "Bad Request",
            401 => "Unauthenticated",
            403 => "Forbidden",
            420 => "Unknown Attribute",
            437 => "Allocation Mismatch",
            438 => "Stale Nonce",
            440 => "Address Family not Supported",
            441 => "Wrong Credentials",
            442 => "Unsupported Transport Protocol",
            443 => "Peer Address Family Mismatch",
            446 => "Connection Already Exists",
            447 => "Connection Timeout or Failure",
            486 => "Allocation Quota Reached",
            500 => "Server Error",
            508 => "Insufficient Capacity",
            _ => "",
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A 96-bit STUN transaction ID. See RFC 8489, section 5.
pub type TransactionId = [u8; 12];

/// IANA protocol number of UDP, the value of REQUESTED-TRANSPORT for UDP relays.
/// See RFC 8656, section 18.8.
pub const PROTOCOL_UDP: u8 = 17;
/// IANA protocol number of TCP, REQUESTED-TRANSPORT for TCP relays. See RFC 6062, section 5.1.
pub const PROTOCOL_TCP: u8 = 6;

/// ALPN protocol ID of STUN/TURN over TLS (`stun.turn`). See RFC 7443, section 6.
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips_for_every_method_and_class() {
        for m in 0..0x1000u16 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = MessageType::new(Method(m), class);
                assert_eq!(MessageType::from_u16(t.to_u16()), t);
                assert_eq!(t.to_u16() & 0xC000, 0);
            }
        }
    }

    #[test]
    fn well_known_type_values() {
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Request).to_u16(),
            0x0001
        );
        assert_eq!(
            MessageType::new(Method::BINDING, Class::Success).to_u16(),
            0x0101
        );
        assert_eq!(
            MessageType::new(Method::ALLOCATE, Class::Error).to_u16(),
            0x0113
        );
        assert_eq!(
            MessageType::new(Method::SEND, Class::Indication).to_u16(),
            0x0016
        );
        assert_eq!(
            MessageType::new(Method::DATA, Class::Indication).to_u16(),
            0x0017
        );
    }
}
