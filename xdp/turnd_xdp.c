// SPDX-License-Identifier: MIT OR GPL-2.0-only
/* The kernel needs a GPL-compatible license string ("Dual MIT/GPL" below):
 * bpf_fib_lookup and bpf_redirect are GPL-only helpers. */
/*
 * turnd XDP fast path for ChannelData over UDP (RFC 8656 section 12).
 *
 * Two steady-state cases are handled in the kernel; everything else is
 * XDP_PASSed to the stack (and so to turnd in user space) unchanged:
 *
 *  client -> peer: a UDP datagram to a listening address whose payload is
 *    exactly one unpadded ChannelData message (4-byte header: channel
 *    0x4000-0x7FFF as turnd accepts (RFC 8656 section 12 uses 0x4000-0x4FFF,
 *    RFC 5766 clients up to 0x7FFE), length; UDP payload == 4 + length) and whose
 *    (client addr, client port, listening addr, listening port, channel) is
 *    in turnd_c2p: the header is stripped, the datagram rewritten to
 *    relay addr:port -> peer addr:port and transmitted.
 *  peer -> client: a UDP datagram to a relayed address from a peer in
 *    turnd_p2c: a ChannelData header is prepended, the datagram rewritten to
 *    listening addr:port -> client addr:port and transmitted.
 *
 * The payload is never read beyond the ChannelData header nor copied: the
 * UDP checksum is updated incrementally (RFC 1624) from the fields that
 * change (pseudo-header addresses and length, ports, length, the 4 header
 * bytes); the IPv4 header checksum is recomputed over its 20 bytes.
 *
 * IP header fields follow RFC 8656 section 11 "preferred behavior": TTL /
 * hop limit = incoming - 1 (<= 1: passed), DSCP/ECN and DF copied; the IPv6
 * flow label is set to 0, the IPv4 identification is kept.
 *
 * Next hop: bpf_fib_lookup (needs forwarding enabled on the ingress
 * interface and a resolved neighbour, else passed); XDP_TX when the egress
 * interface is the ingress one, bpf_redirect otherwise.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "turnd_xdp.h"

/* flags for bpf_fib_lookup; BPF_FIB_LOOKUP_OUTPUT (2) was tried to avoid the
 * forwarding requirement, see README.md */
#ifndef TURND_FIB_FLAGS
#define TURND_FIB_FLAGS 0
#endif

#define AF_INET 2
#define AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TURND_MAX_BINDINGS);
	__type(key, struct turnd_c2p_key);
	__type(value, struct turnd_c2p_val);
} turnd_c2p SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TURND_MAX_BINDINGS);
	__type(key, struct turnd_p2c_key);
	__type(value, struct turnd_p2c_val);
} turnd_p2c SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TURND_MAX_STATS);
	__type(key, __u32);
	__type(value, struct turnd_stats);
} turnd_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TURND_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} turnd_counters SEC(".maps");

static __always_inline int count(__u32 idx, int action)
{
	__u64 *c = bpf_map_lookup_elem(&turnd_counters, &idx);

	if (c)
		*c += 1;
	return action;
}

#define PASS(reason) count(reason, XDP_PASS)

/* Ones' complement sum of an address as it appears in the pseudo-header:
 * 8 words for IPv6, the last 2 (the IPv4 address) for IPv4-mapped. */
static __always_inline __u64 addr_sum(const __u8 *a, const int v6)
{
	const __u16 *w = (const __u16 *)a;
	__u64 s = (__u64)w[6] + w[7];

	if (v6)
		s += (__u64)w[0] + w[1] + w[2] + w[3] + w[4] + w[5];
	return s;
}

/* Sum of the complements, i.e. "subtract" in ones' complement arithmetic. */
static __always_inline __u64 addr_sum_neg(const __u8 *a, const int v6)
{
	const __u16 *w = (const __u16 *)a;
	__u64 s = (__u64)(__u16)~w[6] + (__u16)~w[7];

	if (v6)
		s += (__u64)(__u16)~w[0] + (__u16)~w[1] + (__u16)~w[2] +
		     (__u16)~w[3] + (__u16)~w[4] + (__u16)~w[5];
	return s;
}

static __always_inline __u16 fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline __u16 neg(__u16 w)
{
	return (__u16)~w;
}

/* 1 when the 16-byte address is IPv4-mapped (::ffff:a.b.c.d). */
static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void ipv4_csum(struct iphdr *iph)
{
	const __u16 *w = (const __u16 *)iph;
	__u64 s = 0;

	iph->check = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		s += w[i];
	iph->check = neg(fold(s));
}

static __always_inline int fib_pass(int rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		return PASS(TURND_CNT_PASS_FIB_NO_NEIGH);
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		return PASS(TURND_CNT_PASS_FIB_FWD_DISABLED);
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return PASS(TURND_CNT_PASS_FIB_FRAG_NEEDED);
	default:
		return PASS(TURND_CNT_PASS_FIB_OTHER);
	}
}

/* Looks up the next hop for src -> dst; 0 on success. */
static __always_inline int fib(struct xdp_md *ctx, struct bpf_fib_lookup *f, const int v6,
			       const __u8 *src, const __u8 *dst, __be16 sport, __be16 dport,
			       __u16 l3_len, __u8 tos)
{
	__builtin_memset(f, 0, sizeof(*f));
	f->l4_protocol = IPPROTO_UDP;
	f->sport = sport;
	f->dport = dport;
	f->tot_len = l3_len;
	f->ifindex = ctx->ingress_ifindex;
	if (v6) {
		f->family = AF_INET6;
		__builtin_memcpy(f->ipv6_src, src, 16);
		__builtin_memcpy(f->ipv6_dst, dst, 16);
	} else {
		f->family = AF_INET;
		f->tos = tos;
		__builtin_memcpy(&f->ipv4_src, src + 12, 4);
		__builtin_memcpy(&f->ipv4_dst, dst + 12, 4);
	}
	return bpf_fib_lookup(ctx, f, sizeof(*f), TURND_FIB_FLAGS);
}

/* The saved IP header of the incoming packet, either family. */
union l3hdr {
	struct iphdr v4;
	struct ipv6hdr v6;
};

/*
 * Writes Ethernet, IP and UDP headers at the (already adjusted) start of the
 * packet. Returns -1 if the packet is too short (cannot happen after the
 * checks before adjust_head, but the verifier needs the bounds).
 */
static __always_inline int write_headers(struct xdp_md *ctx, const int v6,
					 const struct bpf_fib_lookup *f, union l3hdr *ip,
					 const __u8 *src, const __u8 *dst, __be16 sport,
					 __be16 dport, __u16 udp_len, __u16 udp_csum)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	const int l3 = v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	struct ethhdr *eth = data;
	struct udphdr *udp = data + sizeof(*eth) + l3;

	if ((void *)(udp + 1) > end)
		return -1;
	__builtin_memcpy(eth->h_dest, f->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, f->smac, ETH_ALEN);
	eth->h_proto = v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP);
	if (v6) {
		struct ipv6hdr *h = (void *)(eth + 1);

		ip->v6.flow_lbl[0] &= 0xf0; /* keep traffic class, flow label 0 */
		ip->v6.flow_lbl[1] = 0;
		ip->v6.flow_lbl[2] = 0;
		ip->v6.payload_len = bpf_htons(udp_len);
		ip->v6.hop_limit -= 1;
		__builtin_memcpy(&ip->v6.saddr, src, 16);
		__builtin_memcpy(&ip->v6.daddr, dst, 16);
		__builtin_memcpy(h, &ip->v6, sizeof(*h));
	} else {
		struct iphdr *h = (void *)(eth + 1);

		ip->v4.tot_len = bpf_htons(sizeof(struct iphdr) + udp_len);
		ip->v4.ttl -= 1;
		__builtin_memcpy(&ip->v4.saddr, src + 12, 4);
		__builtin_memcpy(&ip->v4.daddr, dst + 12, 4);
		ipv4_csum(&ip->v4);
		__builtin_memcpy(h, &ip->v4, sizeof(*h));
	}
	udp->source = sport;
	udp->dest = dport;
	udp->len = bpf_htons(udp_len);
	udp->check = udp_csum;
	return 0;
}

static __always_inline int transmit(struct xdp_md *ctx, const struct bpf_fib_lookup *f,
				    __u32 cnt_tx)
{
	/* cnt_tx + 1 is the matching _REDIRECT counter */
	if (f->ifindex == ctx->ingress_ifindex)
		return count(cnt_tx, XDP_TX);
	count(cnt_tx + 1, 0);
	return bpf_redirect(f->ifindex, 0);
}

/*
 * Hairpin: ChannelData from client A whose peer is client B's relayed
 * address on this server, where B has a channel to A's relayed address
 * (`hv`, B's peer -> client entry). User space would send A's data from A's
 * relayed address to B's and receive it there; here the datagram goes
 * straight to B as ChannelData with B's channel number: same length, new
 * addresses, ports and channel. Counted as A's client -> peer and B's
 * peer -> client packet.
 */
static __always_inline int hairpin(struct xdp_md *ctx, const int v6, union l3hdr *ip,
				   const __u8 *src, const __u8 *dst, struct udphdr *udp,
				   struct turnd_stats *st, struct turnd_p2c_val *hv, __u8 tos,
				   __u16 ch_raw, __u16 data_len, __u16 udp_len, const int l3)
{
	const int hdrs = sizeof(struct ethhdr) + l3 + sizeof(struct udphdr);
	struct bpf_fib_lookup f;
	struct turnd_stats *st2;
	__u32 idx2 = hv->stats_idx;
	__u16 old_csum = udp->check;
	__be16 sport = udp->source, dport = udp->dest;
	__u16 new_ch = hv->channel;
	__u64 acc;
	int rc;

	if (bpf_ktime_get_ns() >= hv->deadline_ns)
		return PASS(TURND_CNT_PASS_EXPIRED);
	if (is_v4_mapped(hv->client_addr) == v6 || is_v4_mapped(hv->listen_addr) == v6)
		return PASS(TURND_CNT_PASS_BAD_ENTRY);
	st2 = bpf_map_lookup_elem(&turnd_stats, &idx2);
	if (!st2)
		return PASS(TURND_CNT_PASS_BAD_ENTRY);
	rc = fib(ctx, &f, v6, hv->listen_addr, hv->client_addr, hv->listen_port, hv->client_port,
		 l3 + udp_len, tos);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return fib_pass(rc);

	__u16 csum = 0;

	if (old_csum) {
		acc = neg(old_csum);
		acc += addr_sum_neg(src, v6) + addr_sum_neg(dst, v6);
		acc += neg(sport) + neg(dport) + neg(ch_raw);
		acc += addr_sum(hv->listen_addr, v6) + addr_sum(hv->client_addr, v6);
		acc += (__u64)hv->listen_port + hv->client_port + new_ch;
		csum = neg(fold(acc));
		if (csum == 0)
			csum = 0xffff;
	}
	if (write_headers(ctx, v6, &f, ip, hv->listen_addr, hv->client_addr, hv->listen_port,
			  hv->client_port, udp_len, csum))
		return XDP_ABORTED;

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if (data + hdrs + 4 > end)
		return XDP_ABORTED;
	*(__u16 *)(data + hdrs) = new_ch;
	st->c2p_packets += 1;
	st->c2p_bytes += data_len;
	st2->p2c_packets += 1;
	st2->p2c_bytes += data_len;
	return transmit(ctx, &f, TURND_CNT_HAIRPIN_TX);
}

static __always_inline int handle(struct xdp_md *ctx, const int v6)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	const int l3 = v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	const int hdrs = sizeof(struct ethhdr) + l3 + sizeof(struct udphdr);
	union l3hdr ip;
	struct udphdr *udp;
	__u8 src[16] __attribute__((aligned(8)));
	__u8 dst[16] __attribute__((aligned(8)));
	__u16 udp_len, ttl;
	__u8 tos = 0;

	if (data + hdrs > end)
		return PASS(TURND_CNT_PASS_NOT_UDP);
	if (v6) {
		struct ipv6hdr *h = data + sizeof(struct ethhdr);

		if (h->version != 6 || h->nexthdr != IPPROTO_UDP)
			return PASS(TURND_CNT_PASS_NOT_UDP);
		__builtin_memcpy(&ip.v6, h, sizeof(*h));
		udp_len = bpf_ntohs(h->payload_len);
		ttl = h->hop_limit;
		__builtin_memcpy(src, &h->saddr, 16);
		__builtin_memcpy(dst, &h->daddr, 16);
	} else {
		struct iphdr *h = data + sizeof(struct ethhdr);

		if (h->version != 4 || h->ihl != 5 || h->protocol != IPPROTO_UDP ||
		    (h->frag_off & bpf_htons(0x3fff)))
			return PASS(TURND_CNT_PASS_NOT_UDP);
		__builtin_memcpy(&ip.v4, h, sizeof(*h));
		udp_len = bpf_ntohs(h->tot_len) - sizeof(struct iphdr);
		ttl = h->ttl;
		tos = h->tos;
		__builtin_memset(src, 0, 10);
		__builtin_memset(dst, 0, 10);
		src[10] = src[11] = dst[10] = dst[11] = 0xff;
		__builtin_memcpy(src + 12, &h->saddr, 4);
		__builtin_memcpy(dst + 12, &h->daddr, 4);
	}
	udp = data + sizeof(struct ethhdr) + l3;
	/* the UDP length must agree with the IP length and fit the frame */
	if (bpf_ntohs(udp->len) != udp_len || udp_len < sizeof(struct udphdr) ||
	    data + sizeof(struct ethhdr) + l3 + udp_len > end)
		return PASS(TURND_CNT_PASS_NOT_UDP);

	__u16 old_csum = udp->check;
	__u16 payload_len = udp_len - sizeof(struct udphdr);
	struct bpf_fib_lookup f;
	__u64 acc;
	int rc;

	/* client -> peer: ChannelData to a listening address */
	if (payload_len >= 4 && data + hdrs + 4 <= end) {
		__u8 *cd = data + hdrs;
		__u16 ch_raw = *(__u16 *)cd;
		__u16 len_raw = *(__u16 *)(cd + 2);

		if ((cd[0] & 0xc0) == 0x40) { /* 0x4000-0x7FFF */
			struct turnd_c2p_key k;
			struct turnd_c2p_val *v;

			__builtin_memset(&k, 0, sizeof(k));
			__builtin_memcpy(k.client_addr, src, 16);
			__builtin_memcpy(k.listen_addr, dst, 16);
			k.client_port = udp->source;
			k.listen_port = udp->dest;
			k.channel = ch_raw;
			v = bpf_map_lookup_elem(&turnd_c2p, &k);
			if (v) {
				struct turnd_stats *st;
				__u32 idx = v->stats_idx;
				__u16 data_len = bpf_ntohs(len_raw);
				__u16 new_len = udp_len - 4;

				if (bpf_ktime_get_ns() >= v->deadline_ns)
					return PASS(TURND_CNT_PASS_EXPIRED);
				if (payload_len != 4 + (__u32)data_len)
					return PASS(TURND_CNT_PASS_BAD_LEN);
				if (is_v4_mapped(v->relay_addr) == v6 ||
				    is_v4_mapped(v->peer_addr) == v6)
					return PASS(TURND_CNT_PASS_BAD_ENTRY);
				st = bpf_map_lookup_elem(&turnd_stats, &idx);
				if (!st)
					return PASS(TURND_CNT_PASS_BAD_ENTRY);
				if (ttl <= 1)
					return PASS(TURND_CNT_PASS_TTL);
				if (v6 && old_csum == 0)
					return PASS(TURND_CNT_PASS_NO_CSUM);
				/* hairpin: the peer is another relayed address of this
				 * server whose allocation has a channel to ours */
				struct turnd_p2c_key hk;
				struct turnd_p2c_val *hv;

				__builtin_memset(&hk, 0, sizeof(hk));
				__builtin_memcpy(hk.peer_addr, v->relay_addr, 16);
				__builtin_memcpy(hk.relay_addr, v->peer_addr, 16);
				hk.peer_port = v->relay_port;
				hk.relay_port = v->peer_port;
				hv = bpf_map_lookup_elem(&turnd_p2c, &hk);
				if (hv)
					return hairpin(ctx, v6, &ip, src, dst, udp, st, hv, tos,
						       ch_raw, data_len, udp_len, l3);
				rc = fib(ctx, &f, v6, v->relay_addr, v->peer_addr, v->relay_port,
					 v->peer_port, l3 + new_len, tos);
				if (rc != BPF_FIB_LKUP_RET_SUCCESS)
					return fib_pass(rc);

				__u16 csum = 0; /* IPv4 without checksum stays without */

				if (old_csum) {
					acc = neg(old_csum);
					acc += addr_sum_neg(src, v6) + addr_sum_neg(dst, v6);
					acc += 2 * (__u64)neg(bpf_htons(udp_len)); /* pseudo + UDP header */
					acc += neg(k.client_port) + neg(k.listen_port);
					acc += neg(ch_raw) + neg(len_raw);
					acc += addr_sum(v->relay_addr, v6) + addr_sum(v->peer_addr, v6);
					acc += 2 * (__u64)bpf_htons(new_len);
					acc += (__u64)v->relay_port + v->peer_port;
					csum = neg(fold(acc));
					if (csum == 0)
						csum = 0xffff;
				}
				if (bpf_xdp_adjust_head(ctx, 4))
					return PASS(TURND_CNT_PASS_ADJUST_HEAD);
				/* from here on the packet is modified: never pass it */
				if (write_headers(ctx, v6, &f, &ip, v->relay_addr, v->peer_addr,
						  v->relay_port, v->peer_port, new_len, csum))
					return XDP_ABORTED;
				st->c2p_packets += 1;
				st->c2p_bytes += data_len;
				return transmit(ctx, &f, TURND_CNT_C2P_TX);
			}
		}
	}

	/* peer -> client: any UDP datagram to a relayed address */
	struct turnd_p2c_key pk;
	struct turnd_p2c_val *pv;

	__builtin_memset(&pk, 0, sizeof(pk));
	__builtin_memcpy(pk.peer_addr, src, 16);
	__builtin_memcpy(pk.relay_addr, dst, 16);
	pk.peer_port = udp->source;
	pk.relay_port = udp->dest;
	pv = bpf_map_lookup_elem(&turnd_p2c, &pk);
	if (!pv)
		return PASS(TURND_CNT_PASS_NO_ENTRY);

	struct turnd_stats *st;
	__u32 idx = pv->stats_idx;
	__u32 new_len = (__u32)udp_len + 4;

	if (bpf_ktime_get_ns() >= pv->deadline_ns)
		return PASS(TURND_CNT_PASS_EXPIRED);
	if (is_v4_mapped(pv->client_addr) == v6 || is_v4_mapped(pv->listen_addr) == v6)
		return PASS(TURND_CNT_PASS_BAD_ENTRY);
	st = bpf_map_lookup_elem(&turnd_stats, &idx);
	if (!st)
		return PASS(TURND_CNT_PASS_BAD_ENTRY);
	if (ttl <= 1)
		return PASS(TURND_CNT_PASS_TTL);
	if (v6 && old_csum == 0)
		return PASS(TURND_CNT_PASS_NO_CSUM);
	if (new_len > 0xffff)
		return PASS(TURND_CNT_PASS_FIB_FRAG_NEEDED);
	rc = fib(ctx, &f, v6, pv->listen_addr, pv->client_addr, pv->listen_port, pv->client_port,
		 l3 + new_len, tos);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return fib_pass(rc);

	__u16 ch_raw = pv->channel;
	__u16 len_raw = bpf_htons(payload_len);
	__u16 csum = 0;

	if (old_csum) {
		acc = neg(old_csum);
		acc += addr_sum_neg(src, v6) + addr_sum_neg(dst, v6);
		acc += 2 * (__u64)neg(bpf_htons(udp_len));
		acc += neg(pk.peer_port) + neg(pk.relay_port);
		acc += addr_sum(pv->listen_addr, v6) + addr_sum(pv->client_addr, v6);
		acc += 2 * (__u64)bpf_htons(new_len);
		acc += (__u64)pv->listen_port + pv->client_port;
		acc += (__u64)ch_raw + len_raw;
		csum = neg(fold(acc));
		if (csum == 0)
			csum = 0xffff;
	}
	if (bpf_xdp_adjust_head(ctx, -4))
		return PASS(TURND_CNT_PASS_ADJUST_HEAD);
	if (write_headers(ctx, v6, &f, &ip, pv->listen_addr, pv->client_addr, pv->listen_port,
			  pv->client_port, new_len, csum))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + hdrs + 4 > end)
		return XDP_ABORTED;
	*(__u16 *)(data + hdrs) = ch_raw;
	*(__u16 *)(data + hdrs + 2) = len_raw;
	st->p2c_packets += 1;
	st->p2c_bytes += payload_len;
	return transmit(ctx, &f, TURND_CNT_P2C_TX);
}

SEC("xdp")
int turnd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return PASS(TURND_CNT_PASS_NOT_UDP);
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle(ctx, 0);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle(ctx, 1);
	return PASS(TURND_CNT_PASS_NOT_UDP);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
