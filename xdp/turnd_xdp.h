/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * turnd XDP fast path: map layouts shared by the BPF program (turnd_xdp.c)
 * and user space (the Rust side mirrors these structs with #[repr(C)]).
 *
 * Conventions, for every struct below:
 *  - Addresses are 16 bytes, network byte order. An IPv4 address is stored
 *    IPv4-mapped: ::ffff:a.b.c.d (bytes 0-9 zero, bytes 10-11 0xff, bytes
 *    12-15 the IPv4 address), i.e. Rust's Ipv4Addr::to_ipv6_mapped().octets().
 *    One layout for both families; the program checks that the family of the
 *    packet and of every address in the value agree (else XDP_PASS).
 *  - Ports and channel numbers are network byte order (u16::to_be()).
 *  - Every pad field must be zero: keys are compared bytewise by the kernel.
 *  - Sizes are fixed and asserted below (no implicit padding anywhere).
 *  - deadline_ns is CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns(); in Rust
 *    clock_gettime(CLOCK_MONOTONIC), in Python time.monotonic_ns()). The
 *    program relays only while now < deadline_ns; at or after it the packet
 *    is passed to user space unchanged (XDP_PASS) and counted as
 *    TURND_CNT_PASS_EXPIRED. User space sets it to min(channel binding
 *    expiry, permission expiry, allocation expiry) and deletes the entry when
 *    any of them ends; the deadline only makes a missed delete harmless.
 */
#ifndef TURND_XDP_H
#define TURND_XDP_H

#include <linux/types.h>

/* RFC 8656 12: 0x4000 through 0x4FFF; RFC 5766 clients (coturn's
 * turnutils) use up to 0x7FFE, and turnd accepts 0x4000-0x7FFF. */
#define TURND_CHANNEL_MIN 0x4000
#define TURND_CHANNEL_MAX 0x7FFF

/* Default max_entries; user space may change them before loading
 * (aya: EbpfLoader::set_max_entries, libbpf: bpf_map__set_max_entries). */
#define TURND_MAX_BINDINGS 65536
#define TURND_MAX_STATS 65536

/*
 * Map "turnd_c2p" (BPF_MAP_TYPE_HASH): client -> peer, ChannelData received
 * on a listening address.
 */
struct turnd_c2p_key {
	__u8 client_addr[16]; /* source address of the ChannelData datagram */
	__u8 listen_addr[16]; /* turnd's listening address it was sent to */
	__be16 client_port;   /* source port */
	__be16 listen_port;   /* turnd's listening port (3478 ...) */
	__be16 channel;       /* channel number, 0x4000-0x7FFF */
	__u16 pad;            /* 0 */
}; /* 40 bytes */

struct turnd_c2p_val {
	__u8 relay_addr[16];  /* the allocation's relayed address (new source) */
	__u8 peer_addr[16];   /* the peer bound to the channel (new destination) */
	__be16 relay_port;    /* relayed transport address port (new source port) */
	__be16 peer_port;     /* peer port (new destination port) */
	__u32 stats_idx;      /* index into turnd_stats (< TURND_MAX_STATS) */
	__u64 deadline_ns;    /* CLOCK_MONOTONIC; relay only while now < deadline */
}; /* 48 bytes */

/*
 * Map "turnd_p2c" (BPF_MAP_TYPE_HASH): peer -> client, a plain UDP datagram
 * received on a relayed transport address from a peer that has a channel.
 */
struct turnd_p2c_key {
	__u8 peer_addr[16];   /* source address of the datagram (the peer) */
	__u8 relay_addr[16];  /* the relayed address it was sent to */
	__be16 peer_port;     /* source port */
	__be16 relay_port;    /* relayed transport address port */
	__u32 pad;            /* 0 */
}; /* 40 bytes */

struct turnd_p2c_val {
	__u8 client_addr[16]; /* the allocation's client (new destination) */
	__u8 listen_addr[16]; /* listening address the client uses (new source) */
	__be16 client_port;   /* new destination port */
	__be16 listen_port;   /* new source port */
	__be16 channel;       /* channel number put in the ChannelData header */
	__u16 pad;            /* 0 */
	__u32 stats_idx;      /* index into turnd_stats (< TURND_MAX_STATS) */
	__u32 pad2;           /* 0 */
	__u64 deadline_ns;    /* CLOCK_MONOTONIC; relay only while now < deadline */
}; /* 56 bytes */

/*
 * Map "turnd_stats" (BPF_MAP_TYPE_PERCPU_ARRAY, TURND_MAX_STATS entries):
 * per-binding counters, one value per CPU (user space sums them). The c2p
 * and p2c entries of one channel binding normally share one index. Counters
 * live outside the binding maps so that user space can rewrite a binding
 * (new deadline) without losing increments; user space zeroes a slot before
 * reusing it. Counted only for packets the program transmits (XDP_TX or
 * XDP_REDIRECT returned; a redirect the driver then drops is still counted).
 * Bytes are application data bytes: the ChannelData length (c2p) and the UDP
 * payload length (p2c), i.e. what user space counts for quotas and max-bps.
 */
struct turnd_stats {
	__u64 c2p_packets;
	__u64 c2p_bytes;
	__u64 p2c_packets;
	__u64 p2c_bytes;
}; /* 32 bytes */

/*
 * Map "turnd_counters" (BPF_MAP_TYPE_PERCPU_ARRAY, TURND_CNT_MAX entries of
 * __u64): global packet counters by outcome, summed over CPUs by user space.
 */
enum turnd_counter {
	TURND_CNT_PASS_NOT_UDP = 0,     /* not Ethernet+IPv4/IPv6+UDP, IPv4 options or fragment, IPv6 extension header */
	TURND_CNT_PASS_NO_ENTRY = 1,    /* UDP, but neither a c2p nor a p2c entry matched */
	TURND_CNT_PASS_EXPIRED = 2,     /* entry matched, now >= deadline_ns */
	TURND_CNT_PASS_BAD_LEN = 3,     /* c2p matched but UDP payload != 4 + ChannelData length (short, padded or trailing bytes) */
	TURND_CNT_PASS_TTL = 4,         /* TTL / hop limit <= 1 */
	TURND_CNT_PASS_BAD_ENTRY = 5,   /* family mismatch between packet and entry, or stats_idx out of range */
	TURND_CNT_PASS_NO_CSUM = 6,     /* IPv6 UDP with checksum 0 (invalid) */
	TURND_CNT_PASS_FIB_NO_NEIGH = 7,     /* bpf_fib_lookup: next hop's ARP/ND entry not resolved */
	TURND_CNT_PASS_FIB_FWD_DISABLED = 8, /* bpf_fib_lookup: forwarding disabled on the ingress interface */
	TURND_CNT_PASS_FIB_FRAG_NEEDED = 9,  /* bpf_fib_lookup: packet larger than the egress MTU */
	TURND_CNT_PASS_FIB_OTHER = 10,       /* bpf_fib_lookup: any other failure (no route, blackhole, local ...) */
	TURND_CNT_PASS_ADJUST_HEAD = 11,     /* bpf_xdp_adjust_head failed (driver lacks headroom) */
	TURND_CNT_C2P_TX = 12,          /* client -> peer sent with XDP_TX (same interface) */
	TURND_CNT_C2P_REDIRECT = 13,    /* client -> peer sent with bpf_redirect (other interface) */
	TURND_CNT_P2C_TX = 14,          /* peer -> client sent with XDP_TX */
	TURND_CNT_P2C_REDIRECT = 15,    /* peer -> client sent with bpf_redirect */
	TURND_CNT_HAIRPIN_TX = 16,      /* client -> client through two relayed addresses of this server (hairpin), XDP_TX */
	TURND_CNT_HAIRPIN_REDIRECT = 17, /* hairpin sent with bpf_redirect */
	TURND_CNT_MAX = 18,
};

#ifdef __BPF__
_Static_assert(sizeof(struct turnd_c2p_key) == 40, "c2p key size");
_Static_assert(sizeof(struct turnd_c2p_val) == 48, "c2p value size");
_Static_assert(sizeof(struct turnd_p2c_key) == 40, "p2c key size");
_Static_assert(sizeof(struct turnd_p2c_val) == 56, "p2c value size");
_Static_assert(sizeof(struct turnd_stats) == 32, "stats size");
#endif

#endif /* TURND_XDP_H */
