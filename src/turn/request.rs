//! TURN requests decoded into typed values before any handler runs.
//!
//! Each `parse` does the RFC's validation of one request's attributes and
//! picks the error code a malformed request gets; a handler then sees fields
//! and only decides. Checks that need the server's state (an allocation
//! exists, its relay's family, the peer policy) stay in the handlers, which
//! run them before or after `parse` in the order RFC 8656 gives.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::allocation::Transport;
use crate::stun::{
    AddressFamily, AttributeType, ChannelNumber, ErrorCode, Message, PROTOCOL_TCP, PROTOCOL_UDP,
};

/// Most XOR-PEER-ADDRESS attributes one CreatePermission may carry (more
/// get 400).
pub const MAX_PEERS_PER_PERMISSION_REQUEST: usize = 16;

/// An Allocate request. See RFC 8656, section 7.2, and RFC 6062, section 5.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocateRequest {
    /// REQUESTED-TRANSPORT is TCP (RFC 6062): a TCP relay, not UDP.
    pub tcp_relay: bool,
    /// EVEN-PORT: `Some(r)` asks for an even port, `r` (the R bit) to
    /// reserve the next one too.
    pub even_port: Option<bool>,
    /// RESERVATION-TOKEN: claim the relay address another Allocate reserved.
    pub reservation_token: Option<[u8; 8]>,
    /// REQUESTED-ADDRESS-FAMILY (IPv4 when absent).
    pub family: Option<AddressFamily>,
    /// ADDITIONAL-ADDRESS-FAMILY IPv6: a dual allocation (an IPv6 relay next
    /// to the IPv4 one).
    pub dual: bool,
    /// LIFETIME asked for, in seconds.
    pub lifetime: Option<u32>,
}

impl AllocateRequest {
    /// Decodes an Allocate from a client over `transport`.
    ///
    /// # Errors
    /// - 400 when REQUESTED-TRANSPORT is missing or malformed, asks for TCP
    ///   over UDP, or DONT-FRAGMENT, EVEN-PORT, RESERVATION-TOKEN,
    ///   REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY is malformed,
    ///   or they are combined as RFC 8656 section 7.2 forbids;
    /// - 442 for a transport other than UDP and TCP;
    /// - 440 for an address family RFC 8656 does not define.
    pub fn parse(msg: &Message<'_>, transport: Transport) -> Result<Self, ErrorCode> {
        let tcp_relay = match msg.requested_transport() {
            Some(Ok(PROTOCOL_UDP)) => false,
            // RFC 6062 section 5.1: TCP relays only for clients over TCP or TLS.
            Some(Ok(PROTOCOL_TCP)) if transport != Transport::Udp => true,
            Some(Ok(PROTOCOL_TCP)) => return Err(ErrorCode::BAD_REQUEST),
            Some(Ok(_)) => return Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL),
            Some(Err(_)) | None => return Err(ErrorCode::BAD_REQUEST),
        };
        if let Some(Err(_)) = msg.dont_fragment() {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let even_port = msg
            .even_port()
            .transpose()
            .map_err(|_| ErrorCode::BAD_REQUEST)?;
        let reservation_token = msg
            .reservation_token()
            .transpose()
            .map_err(|_| ErrorCode::BAD_REQUEST)?;
        let family = match msg.requested_address_family() {
            None => None,
            Some(Ok(v)) => match AddressFamily::from_u8(v) {
                Some(f) => Some(f),
                None => return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED),
            },
            Some(Err(_)) => return Err(ErrorCode::BAD_REQUEST),
        };
        // RFC 8656 section 7.2: ADDITIONAL-ADDRESS-FAMILY asks for an IPv6
        // relay next to the IPv4 one; it excludes REQUESTED-ADDRESS-FAMILY.
        let dual = match msg.additional_address_family() {
            None => false,
            Some(Ok(v)) if v == AddressFamily::V6.to_u8() && family.is_none() => true,
            Some(_) => return Err(ErrorCode::BAD_REQUEST),
        };
        if reservation_token.is_some() && (even_port.is_some() || family.is_some() || dual) {
            return Err(ErrorCode::BAD_REQUEST);
        }
        if tcp_relay && (reservation_token.is_some() || even_port.is_some() || dual) {
            return Err(ErrorCode::BAD_REQUEST);
        }
        Ok(AllocateRequest {
            tcp_relay,
            even_port,
            reservation_token,
            family,
            dual,
            lifetime: msg.lifetime(),
        })
    }
}

/// A Refresh request. See RFC 8656, section 7.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshRequest {
    /// LIFETIME asked for, in seconds; 0 deletes the allocation.
    pub lifetime: Option<u32>,
}

impl RefreshRequest {
    /// Decodes a Refresh.
    ///
    /// # Errors
    /// None today: every attribute is optional (a malformed LIFETIME reads as
    /// none); the `Result` keeps the shape of the other requests.
    pub fn parse(msg: &Message<'_>) -> Result<Self, ErrorCode> {
        Ok(RefreshRequest {
            lifetime: msg.lifetime(),
        })
    }

    /// True for LIFETIME 0: delete the allocation.
    pub fn deletes(&self) -> bool {
        self.lifetime == Some(0)
    }
}

/// A CreatePermission request: the peer IP addresses (ports ignored) of its
/// XOR-PEER-ADDRESS attributes, 1 to 16. See RFC 8656, section 9.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreatePermissionRequest {
    peers: [IpAddr; MAX_PEERS_PER_PERMISSION_REQUEST],
    count: usize,
}

impl CreatePermissionRequest {
    /// Decodes a CreatePermission. Each peer, in the order of the request,
    /// is given to `admit`, whose error (443 for a family the allocation
    /// does not relay, 403 for a peer the policy denies) answers the request
    /// at once, as RFC 8656 section 9.2 processes the addresses in turn.
    ///
    /// # Errors
    /// 400 for a malformed XOR-PEER-ADDRESS, for none, or for more than
    /// [`MAX_PEERS_PER_PERMISSION_REQUEST`]; else the first error of `admit`.
    pub fn parse(
        msg: &Message<'_>,
        mut admit: impl FnMut(SocketAddr) -> Result<(), ErrorCode>,
    ) -> Result<Self, ErrorCode> {
        let tid = msg.transaction_id();
        let mut peers = [IpAddr::V4(Ipv4Addr::UNSPECIFIED); MAX_PEERS_PER_PERMISSION_REQUEST];
        let mut count = 0;
        for (t, v) in msg.attributes() {
            if t != AttributeType::XOR_PEER_ADDRESS {
                continue;
            }
            let peer =
                crate::stun::decode_xor_address(v, &tid).map_err(|_| ErrorCode::BAD_REQUEST)?;
            admit(peer)?;
            if count == peers.len() {
                return Err(ErrorCode::BAD_REQUEST);
            }
            peers[count] = peer.ip();
            count += 1;
        }
        if count == 0 {
            return Err(ErrorCode::BAD_REQUEST);
        }
        Ok(CreatePermissionRequest { peers, count })
    }

    /// The peer IP addresses, in the order of the request (duplicates kept).
    pub fn peers(&self) -> &[IpAddr] {
        &self.peers[..self.count]
    }
}

/// A ChannelBind request. See RFC 8656, section 11.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelBindRequest {
    /// CHANNEL-NUMBER, 0x4000-0x7FFF.
    pub channel: ChannelNumber,
    /// XOR-PEER-ADDRESS: the peer transport address.
    pub peer: SocketAddr,
}

impl ChannelBindRequest {
    /// Decodes a ChannelBind.
    ///
    /// # Errors
    /// 400 when CHANNEL-NUMBER is missing, malformed or outside
    /// 0x4000-0x7FFF, or XOR-PEER-ADDRESS is missing or malformed.
    pub fn parse(msg: &Message<'_>) -> Result<Self, ErrorCode> {
        let channel = match msg.channel_number() {
            Some(Ok(c)) => c,
            _ => return Err(ErrorCode::BAD_REQUEST),
        };
        Ok(ChannelBindRequest {
            channel,
            peer: xor_peer_address(msg)?,
        })
    }
}

/// A Send indication: data for a peer. See RFC 8656, section 10.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendIndication<'m> {
    /// XOR-PEER-ADDRESS: where the data goes.
    pub peer: SocketAddr,
    /// DATA: the application data, within the message's bytes.
    pub data: &'m [u8],
}

impl<'m> SendIndication<'m> {
    /// Decodes a Send indication.
    ///
    /// # Errors
    /// 400 when XOR-PEER-ADDRESS is missing or malformed or DATA is missing;
    /// an indication gets no answer, so the caller drops it.
    pub fn parse(msg: &Message<'m>) -> Result<Self, ErrorCode> {
        let peer = xor_peer_address(msg)?;
        let data = msg.get(AttributeType::DATA).ok_or(ErrorCode::BAD_REQUEST)?;
        Ok(SendIndication { peer, data })
    }
}

/// A Connect request: open a TCP connection from the TCP relay to `peer`.
/// See RFC 6062, section 5.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    /// XOR-PEER-ADDRESS.
    pub peer: SocketAddr,
}

impl ConnectRequest {
    /// Decodes a Connect.
    ///
    /// # Errors
    /// 400 when XOR-PEER-ADDRESS is missing or malformed.
    pub fn parse(msg: &Message<'_>) -> Result<Self, ErrorCode> {
        Ok(ConnectRequest {
            peer: xor_peer_address(msg)?,
        })
    }
}

/// A ConnectionBind request: bind this new client connection to a TCP relay
/// connection. See RFC 6062, section 5.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionBindRequest {
    /// CONNECTION-ID of the TCP relay connection.
    pub connection_id: u32,
}

impl ConnectionBindRequest {
    /// Decodes a ConnectionBind.
    ///
    /// # Errors
    /// 400 when CONNECTION-ID is missing or malformed.
    pub fn parse(msg: &Message<'_>) -> Result<Self, ErrorCode> {
        let connection_id = msg.connection_id().ok_or(ErrorCode::BAD_REQUEST)?;
        Ok(ConnectionBindRequest { connection_id })
    }
}

/// The first XOR-PEER-ADDRESS; 400 when missing or malformed.
fn xor_peer_address(msg: &Message<'_>) -> Result<SocketAddr, ErrorCode> {
    match msg.get_xor_address(AttributeType::XOR_PEER_ADDRESS) {
        Some(Ok(p)) => Ok(p),
        _ => Err(ErrorCode::BAD_REQUEST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, MessageType, MessageWriter, Method, TransactionId};

    const TID: TransactionId = [3; 12];

    fn request(method: Method, body: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        let mut buf = vec![0u8; 1500];
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), TID).unwrap();
        body(&mut w);
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn allocate(
        transport: Transport,
        body: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Result<AllocateRequest, ErrorCode> {
        let b = request(Method::ALLOCATE, body);
        AllocateRequest::parse(&Message::parse(&b).unwrap(), transport)
    }

    #[test]
    fn allocate_fields_and_error_codes() {
        let q = allocate(Transport::Udp, |w| {
            w.requested_transport(PROTOCOL_UDP).unwrap();
            w.even_port(true).unwrap();
            w.lifetime(1200).unwrap();
        })
        .unwrap();
        assert_eq!(
            (q.tcp_relay, q.even_port, q.lifetime, q.dual),
            (false, Some(true), Some(1200), false)
        );
        let missing = allocate(Transport::Udp, |_| {});
        assert_eq!(missing, Err(ErrorCode::BAD_REQUEST));
        let sctp = allocate(Transport::Udp, |w| w.requested_transport(132).unwrap());
        assert_eq!(sctp, Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL));
        let tcp_over_udp = allocate(Transport::Udp, |w| {
            w.requested_transport(PROTOCOL_TCP).unwrap()
        });
        assert_eq!(tcp_over_udp, Err(ErrorCode::BAD_REQUEST));
        let tcp = allocate(Transport::Tls, |w| {
            w.requested_transport(PROTOCOL_TCP).unwrap()
        });
        assert!(tcp.unwrap().tcp_relay);
        let family = allocate(Transport::Udp, |w| {
            w.requested_transport(PROTOCOL_UDP).unwrap();
            w.attribute(AttributeType::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0])
                .unwrap();
        });
        assert_eq!(family, Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED));
        let token_and_even = allocate(Transport::Udp, |w| {
            w.requested_transport(PROTOCOL_UDP).unwrap();
            w.even_port(false).unwrap();
            w.reservation_token(&[1; 8]).unwrap();
        });
        assert_eq!(token_and_even, Err(ErrorCode::BAD_REQUEST));
        let dual = allocate(Transport::Udp, |w| {
            w.requested_transport(PROTOCOL_UDP).unwrap();
            w.attribute(AttributeType::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
                .unwrap();
        });
        assert!(dual.unwrap().dual);
    }

    #[test]
    fn channel_bind_checks_the_number_once() {
        let parse = |number: u16| {
            let b = request(Method::CHANNEL_BIND, |w| {
                w.attribute(
                    AttributeType::CHANNEL_NUMBER,
                    &[(number >> 8) as u8, number as u8, 0, 0],
                )
                .unwrap();
                w.xor_address(
                    AttributeType::XOR_PEER_ADDRESS,
                    "192.0.2.1:5".parse().unwrap(),
                )
                .unwrap();
            });
            ChannelBindRequest::parse(&Message::parse(&b).unwrap())
        };
        assert_eq!(parse(0x4000).unwrap().channel.get(), 0x4000);
        assert_eq!(parse(0x3FFF), Err(ErrorCode::BAD_REQUEST));
        assert_eq!(parse(0x8000), Err(ErrorCode::BAD_REQUEST));
    }

    #[test]
    fn create_permission_admits_peers_in_order_and_caps_them() {
        let peers: Vec<SocketAddr> = (1..=17)
            .map(|i| SocketAddr::from(([192, 0, 2, i], 1000)))
            .collect();
        let b = request(Method::CREATE_PERMISSION, |w| {
            for p in &peers {
                w.xor_address(AttributeType::XOR_PEER_ADDRESS, *p).unwrap();
            }
        });
        let m = Message::parse(&b).unwrap();
        // The first refusal wins, before the count is exceeded.
        let third = |p: SocketAddr| {
            if p == peers[2] {
                Err(ErrorCode::FORBIDDEN)
            } else {
                Ok(())
            }
        };
        assert_eq!(
            CreatePermissionRequest::parse(&m, third),
            Err(ErrorCode::FORBIDDEN)
        );
        assert_eq!(
            CreatePermissionRequest::parse(&m, |_| Ok(())),
            Err(ErrorCode::BAD_REQUEST),
            "17 peers"
        );
        let b = request(Method::CREATE_PERMISSION, |w| {
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peers[0])
                .unwrap();
            w.xor_address(AttributeType::XOR_PEER_ADDRESS, peers[1])
                .unwrap();
        });
        let q = CreatePermissionRequest::parse(&Message::parse(&b).unwrap(), |_| Ok(())).unwrap();
        assert_eq!(q.peers(), [peers[0].ip(), peers[1].ip()]);
        let none = request(Method::CREATE_PERMISSION, |_| {});
        assert_eq!(
            CreatePermissionRequest::parse(&Message::parse(&none).unwrap(), |_| Ok(())),
            Err(ErrorCode::BAD_REQUEST)
        );
    }

    #[test]
    fn send_connect_and_connection_bind() {
        let peer: SocketAddr = "192.0.2.1:5".parse().unwrap();
        let mut buf = vec![0u8; 200];
        let mut w = MessageWriter::new(
            &mut buf,
            MessageType::new(Method::SEND, Class::Indication),
            TID,
        )
        .unwrap();
        w.xor_address(AttributeType::XOR_PEER_ADDRESS, peer)
            .unwrap();
        w.attribute(AttributeType::DATA, b"hi").unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(
            SendIndication::parse(&m),
            Ok(SendIndication { peer, data: b"hi" })
        );
        let b = request(Method::CONNECT, |_| {});
        assert_eq!(
            ConnectRequest::parse(&Message::parse(&b).unwrap()),
            Err(ErrorCode::BAD_REQUEST)
        );
        let b = request(Method::CONNECTION_BIND, |w| w.connection_id(9).unwrap());
        assert_eq!(
            ConnectionBindRequest::parse(&Message::parse(&b).unwrap()),
            Ok(ConnectionBindRequest { connection_id: 9 })
        );
    }
}
